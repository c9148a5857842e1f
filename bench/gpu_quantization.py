"""GPU quantization: bf16 against weight-only int8 and int4 on the DeepSeek-LLM-7B shape, in one run.

Needs only torch and transformers (no Django, no project install): of the project it imports only
`inference/engine/quantization.py` and `quantized_linear.py`, which are framework-free. The model is
a LlamaConfig with hidden 4096, intermediate 11008, 30 layers, 32 heads and vocabulary 102400, with
random bf16 weights (they time the same as real ones). Each mode is built from the same seed, so
int8 and int4 quantize exactly the weights that the bf16 baseline ran.

Per mode it prints the GPU memory allocated by the model, the largest logit difference and the
top-1 agreement against bf16 over every position of a fixed random prompt (random weights give
near-flat logits, so agreement here is a pessimistic floor; bench/quantization.py measures
perplexity on a real model), and decode tok/s at batch 1 and 64: a plain loop of model forward
with a DynamicCache, greedy, timed after the prefill. Ratios are against bf16 in the same run.
--kernels adds a per-layer matmul table (each kernel against bf16 F.linear at M = 1 and 64),
which is how quantized_linear picks its CUDA paths.

Run (from the repository root, on the GPU machine):
    python bench/gpu_quantization.py [--layers 30] [--batches 1 64] [--new-tokens 64] [--kernels] [--lm-head]
Smoke check anywhere:
    python bench/gpu_quantization.py --device cpu --layers 2 --hidden 256 --vocab 1024 --batches 1 4 --new-tokens 8
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# As in the gpu worker (MODEL_CUDA_ALLOC_CONF). Without it, and with a 2-step warm-up, bf16 timed
# first decoded 2.5x slower than the same bf16 timed again last in one run (a cold allocator pool
# under a growing KV cache is the likely cause); the full-length warm-ups below also guard that.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.engine.quantization import (
    linear_weight_bytes,
    model_bytes,
    quantization_summary,
    quantize_model,
)


def build_model(args: argparse.Namespace) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(args.hidden // 128, 1)
    intermediate = args.intermediate or -(-args.hidden * 43 // 16 // 128) * 128  # 4096 -> 11008
    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=intermediate, num_hidden_layers=args.layers,
                         num_attention_heads=heads, num_key_value_heads=heads, vocab_size=args.vocab,
                         max_position_embeddings=4096, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    # Initialising straight on the device in bf16 takes seconds instead of minutes on the CPU.
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(args.device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    return model.eval()  # type: ignore[no-untyped-call]  # transformers leaves it untyped


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def decode_tok_s(model: Any, batch: int, prompt_tokens: int, new_tokens: int, device: str) -> float:
    """Greedy decode of `new_tokens` steps for `batch` rows after one prefill; output tokens per second."""
    from transformers import DynamicCache

    generator = torch.Generator(device="cpu").manual_seed(batch)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_tokens), generator=generator).to(device)

    def run(steps: int) -> float:
        cache = DynamicCache()
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        sync(device)
        return time.perf_counter() - t0

    run(new_tokens)  # warm-up at full length: kernel selection, allocator growth
    return batch * new_tokens / run(new_tokens)


def compiled_tok_s(model: Any, batch: int, prompt_tokens: int, new_tokens: int, device: str) -> float:
    """Decode tok/s of `generate` over a static cache, which compiles the decode step (first call)."""
    generator = torch.Generator(device="cpu").manual_seed(batch)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_tokens), generator=generator).to(device)
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0,
              "cache_implementation": "static", "attention_mask": torch.ones_like(ids)}

    def run(n: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        model.generate(ids, **{**kwargs, "max_new_tokens": n, "min_new_tokens": n})
        sync(device)
        return time.perf_counter() - t0

    run(new_tokens)  # compiles
    run(new_tokens)
    # generate's time includes the prefill: subtract a 1-token run so only decode steps count.
    decode = run(new_tokens) - run(1)
    return batch * (new_tokens - 1) / decode


def time_call(fn: Callable[[], Any], device: str) -> float:
    """Best of 3 timings in microseconds, each over enough calls to last about 0.1 s."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    iters = int(min(max(0.1 / max(time.perf_counter() - t0, 1e-7), 2), 200))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - t0) / iters)
    return best * 1e6


def kernel_table(args: argparse.Namespace) -> None:
    """Per-layer matmul time of each path against bf16 F.linear, by rows (tokens in one forward)."""
    from torch import nn

    from inference.engine.quantized_linear import Int4Kernel, Int4WeightOnlyLinear, Int8WeightOnlyLinear

    h = args.hidden
    inter = args.intermediate or -(-h * 43 // 16 // 128) * 128
    dtype = torch.bfloat16
    int4_kernel: Int4Kernel = "tinygemm" if args.device == "cuda" else "cpu"
    names = ["bf16", "int8 kernel", "int8 dequant", "int4 kernel", "int4 dequant", "int8 auto", "int4 auto"]
    print("\nper-layer matmul, microseconds, and bf16 time / this time; 'auto' is what quantize_model builds")
    print(f"{'out x in':<12}{'rows':>5}" + "".join(f"{name:>19}" for name in names))
    for n, k in ((h, h), (inter, h), (h, inter)):
        torch.manual_seed(0)
        linear = nn.Linear(k, n, bias=False, device=args.device, dtype=dtype)
        variants: list[nn.Module] = [
            linear,
            Int8WeightOnlyLinear(linear, kernel="int8pack"),
            Int8WeightOnlyLinear(linear, kernel="dequant"),
            Int4WeightOnlyLinear(linear, kernel=int4_kernel),
            Int4WeightOnlyLinear(linear, kernel="dequant"),
            Int8WeightOnlyLinear(linear),
            Int4WeightOnlyLinear(linear),
        ]
        for rows in args.kernel_rows:
            x = torch.randn(rows, k, device=args.device, dtype=dtype)
            cells = []
            base = 0.0
            with torch.no_grad():
                for variant in variants:
                    try:
                        us = time_call(functools.partial(variant, x), args.device)
                    except RuntimeError as exc:  # a kernel this build lacks
                        cells.append(f"{'n/a':>19}")
                        print(f"  ({type(variant).__name__}: {exc})", file=sys.stderr)
                        continue
                    base = base or us
                    cells.append(f"{us:>11.1f} {base / us:>6.2f}x")
            print(f"{f'{n}x{k}':<12}{rows:>5}" + "".join(cells), flush=True)
    auto8, auto4 = variants[5], variants[6]
    print(f"auto: int8 {auto8.kernel} up to {auto8.max_kernel_rows} rows, "
          f"int4 {auto4.kernel} up to {auto4.max_kernel_rows} rows, then dequantize + matmul")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=0, help="default: 43/16 of hidden, like 11008")
    parser.add_argument("--vocab", type=int, default=102400)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--modes", nargs="+", default=["bf16", "int8", "int4"], choices=["bf16", "int8", "int4"])
    parser.add_argument("--lm-head", action="store_true", help="also quantize the (untied) output head")
    parser.add_argument("--kernels", action="store_true", help="print the per-layer kernel table first")
    parser.add_argument("--kernels-only", action="store_true", help="print only the kernel table")
    parser.add_argument("--kernel-rows", type=int, nargs="+", default=[1, 8, 16, 32, 64, 256, 2048])
    parser.add_argument("--compile", action="store_true",
                        help="add tok/s of generate with a static cache (compiled decode step; minutes per mode)")
    args = parser.parse_args()
    # Newer transformers renames `past_key_values` to `cache`; the GPU image's 5.17 knows only the old name.
    warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
    cuda = args.device == "cuda"
    torch.set_grad_enabled(False)
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{name}, torch {torch.__version__}; {args.layers} layers, hidden {args.hidden}, vocab {args.vocab};"
          f" prompt {args.prompt_tokens} tokens, {args.new_tokens} decode steps; lm_head quantized: {args.lm_head}",
          flush=True)

    if args.kernels or args.kernels_only:
        kernel_table(args)
        if args.kernels_only:
            return
        print()
    prompt = torch.randint(0, args.vocab, (1, args.prompt_tokens),
                           generator=torch.Generator().manual_seed(1)).to(args.device)
    reference: torch.Tensor | None = None
    base_tok_s: dict[int, float] = {}
    base_bytes = 0
    header = (f"{'mode':<6}{'weights GB':>11}{'ratio':>7}{'linear GB':>10}{'alloc GB':>9}"
              f"{'max |dlogit|':>13}{'rel L2':>8}{'top-1 agree':>12}")
    for batch in args.batches:
        header += f"{f'tok/s b={batch}':>14}{'ratio':>8}"
    if args.compile:
        for batch in args.batches:
            header += f"{f'compiled b={batch}':>14}{'ratio':>8}"
    print(header, flush=True)
    base_compiled: dict[int, float] = {}
    notes = []
    for mode in args.modes:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        model = build_model(args)
        t0 = time.perf_counter()
        if mode != "bf16":
            quantize_model(model, mode, include_lm_head=args.lm_head)
        sync(args.device)
        quantize_s = time.perf_counter() - t0
        total = model_bytes(model)
        base_bytes = base_bytes or total
        allocated = torch.cuda.memory_allocated() / 1e9 if cuda else float("nan")
        logits = model(input_ids=prompt).logits[0].float()
        if reference is None:
            reference = logits
        max_diff = (logits - reference).abs().max().item()
        relative = ((logits - reference).norm() / reference.norm()).item()
        agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
        row = (f"{mode:<6}{total / 1e9:>11.3f}{base_bytes / total:>6.2f}x{linear_weight_bytes(model) / 1e9:>10.3f}"
               f"{allocated:>9.3f}{max_diff:>13.3f}{relative:>8.3f}{agree * 100:>11.1f}%")
        for batch in args.batches:
            tok_s = decode_tok_s(model, batch, args.prompt_tokens, args.new_tokens, args.device)
            base_tok_s.setdefault(batch, tok_s)
            row += f"{tok_s:>14.1f}{tok_s / base_tok_s[batch]:>7.2f}x"
        if args.compile:
            for batch in args.batches:
                tok_s = compiled_tok_s(model, batch, args.prompt_tokens, args.new_tokens, args.device)
                base_compiled.setdefault(batch, tok_s)
                row += f"{tok_s:>14.1f}{tok_s / base_compiled[batch]:>7.2f}x"
        print(row, flush=True)
        notes.append(f"{mode}: quantized in {quantize_s:.1f} s, kernels {quantization_summary(model)}"
                     f"{f', peak alloc {torch.cuda.max_memory_allocated() / 1e9:.2f} GB' if cuda else ''}")
        del model, logits
        if args.compile:
            # Compiled code keeps the model it traced alive through its guards; drop it, or the
            # next mode's "alloc GB" counts this model too.
            torch._dynamo.reset()
    print("\n".join(notes))
    print(f"reference logits: max |logit| {reference.abs().max().item() if reference is not None else 0:.2f}")


if __name__ == "__main__":
    main()
