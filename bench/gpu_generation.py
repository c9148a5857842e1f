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
The baseline for the ratios is transformers' continuous batching with its defaults, same run.

Run (from the repository root, on the GPU machine):
    python bench/gpu_generation.py [--streams 1 64 256] [--new-tokens 256] [--prompt-tokens 256]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.engine.engine import Engine, SamplingParams  # noqa: E402 - after the path is set


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
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None
    # A word-level vocabulary of the model's size: decoding costs what a real tokenizer's would.
    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t0")))
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
        return batch * self.bandwidth / (self.weights + batch * self.context * self.kv_per_token)


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

    config = GenerationConfig(max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
    model.generate_batch(inputs=prompts[:2], generation_config=GenerationConfig(
        max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0), progress_bar=False)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    results = model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = sum(len(r.generated_tokens) for r in results.values())
    return {"tok_s": tokens / seconds}


def our_engine(engine: Engine, prompts: list[list[int]], new: int) -> dict[str, float]:
    results: list[tuple[float, float, float, int]] = []  # submitted, first token, finished, tokens
    lock = threading.Lock()

    def consume(prompt: list[int]) -> None:
        submitted = time.perf_counter()
        first = None
        handle = engine.submit(prompt, SamplingParams(max_new_tokens=new))
        count = 0
        for delta in handle:
            if first is None and delta.token_count:
                first = time.perf_counter()
            count = delta.token_count
            if delta.finished:
                if delta.finish_reason == "error":
                    raise RuntimeError(delta.error)
                break
        with lock:
            results.append((submitted, first or time.perf_counter(), time.perf_counter(), count))

    threads = [threading.Thread(target=consume, args=(p,)) for p in prompts]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    ttft = sorted((first - sub) * 1000 for sub, first, _, _ in results)
    tpot = [(end - first) / max(n - 1, 1) * 1000 for _, first, end, n in results]
    return {"tok_s": sum(n for *_, n in results) / wall, "ttft_p50": ttft[len(ttft) // 2],
            "ttft_p99": ttft[min(len(ttft) - 1, int(len(ttft) * 0.99))], "tpot_ms": statistics.median(tpot),
            "tokens": sum(n for *_, n in results)}


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
    rows.append(("plain generate", 1, plain_generate(model, prompts[0], args.new_tokens)))
    print(rows[-1], flush=True)
    baseline_streams = 64 if 64 in args.streams else max(args.streams)
    rows.append(("transformers CB, defaults", baseline_streams,
                 hf_continuous(model, prompts[:baseline_streams], args.new_tokens)))
    print(rows[-1], flush=True)
    baseline = rows[-1][2]["tok_s"]
    for streams in args.streams:
        torch.cuda.reset_peak_memory_stats()
        engine = Engine.from_model(model, tokenizer, batching="continuous", max_batch=streams,
                                   cb_options=cb_options or None)
        try:
            our_engine(engine, prompts[: min(streams, 4)], 8)  # warm-up at this batch size
            result = our_engine(engine, prompts[:streams], args.new_tokens)
        finally:
            engine.close()
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        rows.append(("our engine" + (" +" + ",".join(args.cb) if args.cb else ""), streams, result))
        print(rows[-1], flush=True)

    print(f"\n{'setup':<40}{'streams':>8}{'tok/s':>9}{'x CB':>7}{'roofline':>10}{'TTFT p50':>10}{'TTFT p99':>10}"
          f"{'TPOT ms':>9}{'peak GiB':>9}")
    for name, streams, r in rows:
        print(f"{name:<40}{streams:>8}{r['tok_s']:>9.1f}{r['tok_s'] / baseline:>6.2f}x"
              f"{r['tok_s'] / roof.tok_s(streams):>9.1%}"
              f"{r.get('ttft_p50', float('nan')):>10.1f}{r.get('ttft_p99', float('nan')):>10.1f}"
              f"{r.get('tpot_ms', float('nan')):>9.2f}{r.get('peak_gib', float('nan')):>9.1f}")
    print(f"roofline tok/s: " + ", ".join(f"{s} streams {roof.tok_s(s):,.0f}" for s in sorted({1, *args.streams})))
    print("quantization: bf16 only here; int8/int4 loading is not built yet (issue 6).")


if __name__ == "__main__":
    main()
