"""GPU generation: plain `generate`, transformers' continuous batching, and our engine, in one run.

Needs only torch and transformers on a CUDA machine (no Django, no project install): the engine in
`inference/engine/` is framework-free. The model has the DeepSeek-LLM-7B shape (LlamaConfig: hidden
4096, intermediate 11008, 30 layers, 32 heads, vocabulary 102400) with random bf16 weights, which
time the same as real ones. Prompts are 256 random tokens; every request generates exactly
--new-tokens tokens (no end-of-sequence token exists, so none stops early).

It prints output tok/s, TTFT p50/p99 and TPOT (time per output token after the first), and each
throughput also as a fraction of the bandwidth roofline: a decode step must read the weights
once plus every sequence's KV cache, so at batch B and mean context L the best step time is
(weights + B*L*kv_bytes_per_token) / copy bandwidth (measured here), i.e. B / that tokens per second.
The baseline for the ratios is transformers' continuous batching with its defaults, same run;
"transformers CB + CUDA graphs" (through our engine's "continuous" batching) is its best
configuration that starts in reasonable time, and the table gives our engine against it too.
It also times single decode steps of static batching (CUDA graph replays) against the roofline,
and checks our greedy output against plain `generate` on the same prompt.

Run (from the repository root, on the GPU machine):
    python bench/gpu_generation.py [--streams 1 64 256] [--new-tokens 256] [--prompt-tokens 256]
        [--batching static|continuous] [--cb FIELD=VALUE ...] [--skip-hf-graphs]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine_streams import run_streams

from inference.engine.batching.static.scheduler import StaticBatcher
from inference.engine.engine import Engine
from inference.engine.request import SamplingParams


def build_model(layers: int) -> tuple[Any, Any]:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=102400,
                         max_position_embeddings=4096, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.eval()  # type: ignore[no-untyped-call]  # transformers leaves it untyped
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None
    # A word-level vocabulary of the model's size: decoding costs what a real tokenizer's would.
    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # transformers leaves it untyped
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t0")))
    return model, tokenizer


def copy_bandwidth() -> float:
    """Bytes per second of a device-to-device copy (read + write counted), best of 10."""
    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(10):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    del src, dst
    return 2 * (2 << 30) / best


class Roofline:
    def __init__(self, model: Any, bandwidth: float, prompt: int, new: int) -> None:
        self.weights = sum(p.numel() * p.element_size() for p in model.parameters())
        c = model.config
        self.kv_per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 2
        self.bandwidth, self.context = bandwidth, prompt + new / 2

    def tok_s(self, batch: int) -> float:
        return float(batch * self.bandwidth / (self.weights + batch * self.context * self.kv_per_token))


def plain_generate(model: Any, prompt: list[int], new: int) -> dict[str, float]:
    ids = torch.tensor([prompt], device="cuda")
    kwargs = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "pad_token_id": 0}
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(ids, **kwargs)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = out.shape[1] - len(prompt)
    return {"tok_s": tokens / seconds, "tpot_ms": seconds / tokens * 1000}


def hf_continuous(model: Any, prompts: list[list[int]], new: int) -> dict[str, float]:
    from transformers import GenerationConfig

    # transformers leaves GenerationConfig's constructor untyped.
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
    warm_up = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)
    model.generate_batch(inputs=prompts[:2], generation_config=warm_up, progress_bar=False)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    results = model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = sum(len(r.generated_tokens) for r in results.values())
    return {"tok_s": tokens / seconds}


def step_times(engine: Engine, roof: Roofline, contexts: list[int]) -> None:
    """Replay static batching's decode graph alone: its time per step against the roofline."""
    batcher = engine._batcher
    assert isinstance(batcher, StaticBatcher)
    runner = batcher.runner
    for batch in sorted({1, 8, 64, runner.slots} & set(range(1, runner.slots + 1))):
        for context in contexts:
            graph = runner.graph(batch, context)
            for _ in range(3):
                graph.replay()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(20):
                graph.replay()
            torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) / 20 * 1000
            ideal = (roof.weights + batch * context * roof.kv_per_token) / roof.bandwidth * 1000
            print(f"decode step batch {batch:>3} context {context:>5}: {ms:6.2f} ms"
                  f" (roofline {ideal:5.2f} ms, {ideal / ms:5.1%}); {batch / ms * 1000:8.0f} tok/s", flush=True)


def greedy_agreement(engine: Engine, model: Any, prompt: list[int], new: int = 32) -> str:
    ids = torch.tensor([prompt], device="cuda")
    reference = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    expected = reference[0, len(prompt):].tolist()
    handle = engine.submit(prompt, SamplingParams(max_new_tokens=new))
    handle.wait(120)
    got = handle.token_ids
    same = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), min(len(expected), len(got)))
    return f"{same}/{new} leading tokens identical to plain generate (bf16: near-ties may flip later ones)"


def _value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--batching", default="static", choices=["static", "continuous"])
    parser.add_argument("--quant", nargs="*", default=["int8", "int4"],
                        help="also serve these quantizations through our engine (memory, logits delta, tok/s)")
    parser.add_argument("--quant-tokens", type=int, default=64, help="new tokens per request in the quantized runs")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="static batching: eager elementwise kernels instead of compiled ones")
    parser.add_argument("--skip-hf", action="store_true", help="skip plain generate and transformers CB")
    parser.add_argument("--skip-hf-graphs", action="store_true", help="skip transformers CB + CUDA graphs")
    parser.add_argument("--cb", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="ContinuousBatchingConfig overrides for our engine, e.g. use_cuda_graph=true"
                             " default_compile_level=1")
    args = parser.parse_args()
    cb_options = {key: _value(value) for key, value in (item.split("=", 1) for item in args.cb)}
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    import transformers

    print(f"transformers {transformers.__version__}", flush=True)
    bandwidth = copy_bandwidth()
    model, tokenizer = build_model(args.layers)
    roof = Roofline(model, bandwidth, args.prompt_tokens, args.new_tokens)
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; weights {roof.weights / 1e9:.2f} GB"
          f" (one read {roof.weights / bandwidth * 1000:.2f} ms); KV {roof.kv_per_token / 1024:.0f} KiB/token;"
          f" GPU memory after load {torch.cuda.memory_allocated() / 2**30:.1f} GiB (bf16)", flush=True)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 102400, (args.prompt_tokens,), generator=gen).tolist() for _ in range(max(args.streams))]

    rows: list[tuple[str, int, dict[str, float]]] = []
    baseline_streams = 64 if 64 in args.streams else max(args.streams)
    baseline = best_hf = float("nan")
    if not args.skip_hf:
        rows.append(("plain generate", 1, plain_generate(model, prompts[0], args.new_tokens)))
        print(rows[-1], flush=True)
        rows.append(("transformers CB, defaults", baseline_streams,
                     hf_continuous(model, prompts[:baseline_streams], args.new_tokens)))
        print(rows[-1], flush=True)
        baseline = best_hf = rows[-1][2]["tok_s"]
    if not args.skip_hf and not args.skip_hf_graphs:
        engine = Engine.from_model(model, tokenizer, batching="continuous", max_batch=baseline_streams,
                                   cb_options={"use_cuda_graph": True})
        try:
            run_streams(engine, prompts[:4], 8)
            result = run_streams(engine, prompts[:baseline_streams], args.new_tokens)
        finally:
            engine.close()
        rows.append(("transformers CB + CUDA graphs", baseline_streams, result))
        best_hf = max(best_hf, result["tok_s"])
        print(rows[-1], flush=True)
    context = args.prompt_tokens + args.new_tokens
    for streams in args.streams:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        engine = Engine.from_model(model, tokenizer, batching=args.batching, max_batch=streams,
                                   cb_options=cb_options or None, max_context=context, compile=args.compile)
        print(f"engine ({engine.batching}, {streams} slots) ready in {time.perf_counter() - t0:.1f} s {engine.stats()}",
              flush=True)
        try:
            run_streams(engine, prompts[: min(streams, 4)], 8)  # warm-up at this batch size
            result = run_streams(engine, prompts[:streams], args.new_tokens)
            if streams == max(args.streams) and engine.batching == "static":
                step_times(engine, roof, sorted({256, context}))
            if streams == 1:
                print("greedy check:", greedy_agreement(engine, model, prompts[0]), flush=True)
        finally:
            engine.close()
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        label = f"our engine ({args.batching}{'' if args.compile else ', eager'})"
        rows.append((label + (" +" + ",".join(args.cb) if args.cb else ""), streams, result))
        print(rows[-1], flush=True)

    print(f"\n{'setup':<40}{'streams':>8}{'tok/s':>9}{'x CB':>7}{'roofline':>10}{'TTFT p50':>10}{'TTFT p99':>10}"
          f"{'TPOT ms':>9}{'peak GiB':>9}")
    for name, streams, r in rows:
        print(f"{name:<40}{streams:>8}{r['tok_s']:>9.1f}{r['tok_s'] / baseline:>6.2f}x"
              f"{r['tok_s'] / roof.tok_s(streams):>9.1%}"
              f"{r.get('ttft_p50', float('nan')):>10.1f}{r.get('ttft_p99', float('nan')):>10.1f}"
              f"{r.get('tpot_ms', float('nan')):>9.2f}{r.get('peak_gib', float('nan')):>9.1f}")
    print("roofline tok/s: " + ", ".join(f"{s} streams {roof.tok_s(s):,.0f}" for s in sorted({1, *args.streams})))
    print(f"best transformers configuration in this run: {best_hf:,.1f} tok/s; ours against it: "
          + ", ".join(f"{s} streams {r['tok_s'] / best_hf:.2f}x" for name, s, r in rows if name.startswith("our")))
    if args.quant:
        quantized(args, model, tokenizer, prompts, context)
    print("per-layer kernel timings and perplexity on a real model: bench/gpu_quantization.py, bench/quantization.py")


def quantized(args: Any, reference: Any, tokenizer: Any, prompts: list[list[int]], context: int) -> None:
    """Each quantization through our engine: the same random weights (same seed), quantized."""
    import gc

    from inference.engine.quantization import quantize_model

    probe = torch.tensor([prompts[0][:128]], device="cuda")
    with torch.inference_mode():
        ref_logits = reference(probe).logits[0].float()
    rows = []
    for mode in ["none", *args.quant]:
        gc.collect()
        torch.cuda.empty_cache()
        if mode == "none":
            model = reference
        else:
            model, _ = build_model(args.layers)
            quantize_model(model, mode)
        gc.collect()
        torch.cuda.empty_cache()
        weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        with torch.inference_mode():
            logits = model(probe).logits[0].float()
        delta = (logits - ref_logits).abs().max().item()
        agree = (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()
        engine = Engine.from_model(model, tokenizer, batching="static", max_batch=64, max_context=context)
        try:
            run_streams(engine, prompts[:2], 4)
            one = run_streams(engine, prompts[:1], args.quant_tokens)
            many = run_streams(engine, prompts[:64], args.quant_tokens)
        finally:
            engine.close()
        rows.append((mode, weights, delta, agree, one, many))
        print(rows[-1][:4], one["tok_s"], many["tok_s"], flush=True)
        del engine, model
    base = rows[0]
    print(f"\n{'quantization':<14}{'weights GB':>11}{'ratio':>7}{'max |dlogit|':>13}{'top-1 agree':>12}"
          f"{'1 stream tok/s':>15}{'ratio':>7}{'64 streams tok/s':>17}{'ratio':>7}")
    for mode, weights, delta, agree, one, many in rows:
        print(f"{'bf16' if mode == 'none' else mode:<14}{weights / 1e9:>11.2f}{base[1] / weights:>6.2f}x{delta:>13.3f}"
              f"{agree:>12.1%}{one['tok_s']:>15.1f}{one['tok_s'] / base[4]['tok_s']:>6.2f}x"
              f"{many['tok_s']:>17.1f}{many['tok_s'] / base[5]['tok_s']:>6.2f}x")
    print(f"(weights as allocated: parameters and buffers; {args.quant_tokens} new tokens per request; random"
          " weights make the logits delta a pessimistic bound, see bench/quantization.py for perplexity)")


if __name__ == "__main__":
    main()
