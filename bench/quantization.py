"""CPU quantization: the bundled SmolLM2-135M in fp32, bf16, int8 and int4, against fp32 in one run.

Per mode it prints the model's weight memory (all parameters and buffers, tied ones once) and the
share in the quantized linear layers, perplexity on a fixed shipped text (two documents of
bench/data/qa/docs, about 2,300 tokens, scored in 512-token windows), prefill tok/s of that
scoring pass, and greedy decode tok/s at batch 1 (a forward loop over a DynamicCache, 64 steps
after a chat prompt, best of two runs after a full-length warm-up). Ratios are against fp32, same run.
"int8"/"int4" keep fp32 activations (the CPU default dtype), where the quantized layers dequantize
and call fp32 matmuls; the "bf16" rows of them load in bf16, where the aten kernels serve decode.

SmolLM2 ties its output head to the embeddings, so `quantize_model` leaves the head alone (a
quantized copy would add memory). The "+head" rows untie and quantize it anyway, to measure what
that trade would buy: the head is 28M of the model's 135M parameters, so on decode it matters.

Run (after `./dsw run` or `./dsw test` has installed the venv and converted the model once):
    .venv/bin/python bench/quantization.py [--new-tokens 64] [--window 512]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.engine import default_model_dir, load_model
from inference.engine.quantization import (
    linear_weight_bytes,
    model_bytes,
    quantization_summary,
    quantize_model,
)

TEXTS = ["employee_handbook.md", "it_security_policy.md"]
# (label, load dtype, quantization, also quantize the untied head)
MODES = [
    ("fp32", "fp32", "none", False),
    ("bf16", "bf16", "none", False),
    ("int8", "fp32", "int8", False),
    ("int4", "fp32", "int4", False),
    # bf16 activations: where the CPU's aten int8/int4 kernels run (their fp32 paths are slow).
    ("int8 bf16", "bf16", "int8", False),
    ("int4 bf16", "bf16", "int4", False),
    ("int8+head", "fp32", "int8", True),
    ("int4+head", "fp32", "int4", True),
]


def load(path: Path, dtype: str, quantization: str, head: bool) -> tuple[Any, Any]:
    if not head:
        return load_model(path, device="cpu", dtype=dtype, quantization=quantization)
    from torch import nn

    model, tokenizer = load_model(path, device="cpu", dtype=dtype)
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    return quantize_model(model, quantization, include_lm_head=True), tokenizer


def perplexity(model: Any, ids: Any, window: int) -> tuple[float, float]:
    """Perplexity over non-overlapping windows, and prefill tokens per second of that pass."""
    import torch

    nll, count = 0.0, 0
    t0 = time.perf_counter()
    for start in range(0, ids.shape[1] - 1, window):
        chunk = ids[:, start : start + window]
        if chunk.shape[1] < 2:
            break
        logits = model(input_ids=chunk).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum")
        nll += loss.item()
        count += chunk.shape[1] - 1
    seconds = time.perf_counter() - t0
    return math.exp(nll / count), ids.shape[1] / seconds


def decode_tok_s(model: Any, prompt: list[int], new_tokens: int) -> float:
    import torch
    from transformers import DynamicCache

    ids = torch.tensor([prompt])

    def run() -> float:
        out = model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        return time.perf_counter() - t0

    run()  # warm-up at full length
    # Best of two: the machine's other processes can take a core away for a whole run.
    return new_tokens / min(run(), run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--modes", nargs="+", default=[m[0] for m in MODES], choices=[m[0] for m in MODES])
    args = parser.parse_args()
    # Newer transformers renames `past_key_values` to `cache`; the GPU image's 5.17 knows only the old name.
    warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
    import torch

    torch.set_grad_enabled(False)
    data = Path(os.environ.get("DSW_DATA_DIR", Path(__file__).resolve().parent.parent / "var"))
    path = default_model_dir(data / "models")
    docs = Path(__file__).resolve().parent / "data" / "qa" / "docs"
    text = "\n\n".join((docs / name).read_text(encoding="utf-8") for name in TEXTS)

    base: dict[str, float] = {}
    rows = []
    print(f"SmolLM2-135M on {os.cpu_count()} CPUs ({torch.get_num_threads()} threads), torch {torch.__version__}",
          flush=True)
    header = (f"{'mode':<11}{'weights MB':>11}{'ratio':>7}{'linear MB':>10}{'ratio':>7}{'perplexity':>11}{'ratio':>7}"
              f"{'prefill tok/s':>14}{'ratio':>7}{'decode tok/s':>13}{'ratio':>7}  kernels")
    print(header, flush=True)
    for label, dtype, quantization, head in MODES:
        if label not in args.modes:
            continue
        model, tokenizer = load(path, dtype, quantization, head)
        ids = tokenizer(text, return_tensors="pt").input_ids
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Write a short story about a lighthouse keeper."}],
                                               add_generation_prompt=True, tokenize=True, return_dict=False)
        if hasattr(prompt, "keys"):
            prompt = prompt["input_ids"]
        figures = {
            "weights": model_bytes(model) / 1e6,
            "linear": linear_weight_bytes(model) / 1e6,
        }
        figures["ppl"], figures["prefill"] = perplexity(model, ids, args.window)
        figures["decode"] = decode_tok_s(model, [int(i) for i in prompt], args.new_tokens)
        if not base:
            base = dict(figures)
        kernels = ",".join(f"{k}:{v}" for k, v in quantization_summary(model).items())
        row = (f"{label:<11}{figures['weights']:>11.1f}{base['weights'] / figures['weights']:>6.2f}x"
               f"{figures['linear']:>10.1f}{base['linear'] / figures['linear']:>6.2f}x"
               f"{figures['ppl']:>11.3f}{figures['ppl'] / base['ppl']:>6.3f}x"
               f"{figures['prefill']:>14.1f}{figures['prefill'] / base['prefill']:>6.2f}x"
               f"{figures['decode']:>13.1f}{figures['decode'] / base['decode']:>6.2f}x  {kernels}")
        rows.append(row)
        print(row, flush=True)
        del model
    print(f"(text: {ids.shape[1]} tokens from {', '.join(TEXTS)}; memory ratio = fp32 / mode, "
          f"perplexity ratio = mode / fp32, speed ratio = mode / fp32)")


if __name__ == "__main__":
    main()
