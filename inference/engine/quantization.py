"""Weight-only quantization of a loaded causal LM: `quantize_model(model, "int8" | "int4")`.

Framework-free and cheap to import (torch loads inside the functions), like the rest of
`inference.engine`; the standalone GPU bench imports it without Django. The modules that do the
work, and the measurements behind their kernel choices, live in `quantized_linear`.

What is quantized: every `nn.Linear` of the decoder layers (attention and MLP projections), where
a 7B model keeps 88% of its weights. Not the embeddings, whose lookup reads one row per token and
so costs nothing to keep in full precision. Not the output head by default, by measurement
(bench/quantization.py, SmolLM2): with tied embeddings a quantized copy adds memory rather than
saving it; int4 on the head alone raised perplexity 6% (29.76 -> 31.53) where int4 everywhere
else cost nothing; and it is the widest layer, where the CPU paths are slowest. On an untied 7B
head, int8 would save 0.4 GB of 13.8 for a risk to every logit; `include_lm_head=True` allows it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

Quantization = Literal["none", "int8", "int4"]
QUANTIZATION_MODES: tuple[str, ...] = ("none", "int8", "int4")


def validate_quantization(mode: str | None) -> Quantization:
    """Normalize a configured mode ("" and None mean "none"); raise ValueError on anything else."""
    value = (mode or "none").strip().lower()
    if value == "none":
        return "none"
    if value == "int8":
        return "int8"
    if value == "int4":
        return "int4"
    raise ValueError(f"quantization must be one of {', '.join(QUANTIZATION_MODES)}, not {mode!r}")


def _head_module(model: Any) -> Any:
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if callable(getter) else None


def _is_tied(model: Any, head: Any) -> bool:
    getter = getattr(model, "get_input_embeddings", None)
    embeddings = getter() if callable(getter) else None
    return embeddings is not None and head is not None and head.weight is embeddings.weight


def quantize_model(
    model: Any, mode: str, *, include_lm_head: bool = False, group_size: int | None = None
) -> Any:
    """Replace the model's linear layers, in place, with weight-only int8 or int4 ones; return the model.

    Call it once the model is on its final device and dtype: the int4 packing is device specific.
    `group_size` caps int4's groups; None picks per layer width (quantized_linear.int4_group_size).
    Layers are converted one at a time and each full-precision weight is dropped as soon as its
    replacement exists, so the peak is the unquantized model plus one layer.
    """
    quantization = validate_quantization(mode)
    if quantization == "none":
        return model
    import torch
    from torch import nn

    from .quantized_linear import Int4WeightOnlyLinear, Int8WeightOnlyLinear, int4_group_size

    head = _head_module(model)
    # A tied head shares the embedding matrix: quantizing it would keep both copies.
    skip_head = head is not None and (not include_lm_head or _is_tied(model, head))
    targets: list[tuple[nn.Module, str, nn.Linear]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Linear and not (skip_head and child is head):
                targets.append((parent, name, child))
    kernels: dict[str, int] = {}
    skipped = 0
    with torch.no_grad():
        for parent, name, linear in targets:
            replacement: nn.Module
            if quantization == "int8":
                replacement = Int8WeightOnlyLinear(linear)
            elif int4_group_size(linear.in_features, group_size) is None:
                skipped += 1  # the int4 kernels need groups of 32+; such odd layers stay as they are
                continue
            else:
                replacement = Int4WeightOnlyLinear(linear, group_size=group_size)
            setattr(parent, name, replacement)
            kernel = str(getattr(replacement, "kernel", "?"))
            kernels[kernel] = kernels.get(kernel, 0) + 1
    logger.info("Quantized %d linear layers to %s (kernels: %s; %d left unquantized)",
                sum(kernels.values()), quantization, kernels, skipped)
    return model


def _is_linear_like(module: Any) -> bool:
    from torch import nn

    from .quantized_linear import Int4WeightOnlyLinear, Int8WeightOnlyLinear

    return isinstance(module, (nn.Linear, Int8WeightOnlyLinear, Int4WeightOnlyLinear))


def linear_weight_bytes(model: Any) -> int:
    """Bytes held by the linear layers that `quantize_model` converts (all but the output head).

    Counts weights with their quantization metadata (scales, zeros) and biases; this is the number
    that shrinks about 2x (int8) or 4x (int4) against bf16.
    """
    head = _head_module(model)
    total = 0
    for module in model.modules():
        if module is head or not _is_linear_like(module):
            continue
        for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            total += tensor.numel() * tensor.element_size()
    return total


def model_bytes(model: Any) -> int:
    """Bytes of all parameters and buffers, each storage counted once (tied weights share one)."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def quantization_summary(model: Any) -> dict[str, int]:
    """Count of linear layers per kernel ("nn.Linear" for unquantized ones), for logs and benches."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if _is_linear_like(module):
            key = str(getattr(module, "kernel", "nn.Linear"))
            counts[key] = counts.get(key, 0) + 1
    return counts
