"""The static batcher's layer arithmetic: fused projection weights and the small fused kernels.

`fuse_layer` concatenates a decoder layer's q/k/v and gate/up projection weights into one GEMM
each; `FusedOps` runs the elementwise parts (RMSNorm, the residual add, rotary with the cache
writes, SiLU times up), through torch.compile when asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

Fused = tuple[Any, Any, list[int]]  # (weight, bias or None, output sizes)


def _fuse_linears(modules: list[Any], allow_bias: bool) -> Fused | None:
    """Concatenate the weights of Linear layers that share an input; None if they can't be."""
    import torch

    if not all(type(m) is torch.nn.Linear for m in modules):
        return None  # quantized or adapter-wrapped layers: call them one by one
    biases = [m.bias for m in modules]
    if any(b is not None for b in biases) and (not allow_bias or any(b is None for b in biases)):
        return None
    with torch.no_grad():
        weight = torch.cat([m.weight for m in modules])
        bias = torch.cat(biases) if biases[0] is not None else None
        sizes = [m.out_features for m in modules]
        for m, part in zip(modules, torch.split(weight, sizes), strict=True):
            m.weight = torch.nn.Parameter(part, requires_grad=False)
        if bias is not None:
            for m, part in zip(modules, torch.split(bias, sizes), strict=True):
                m.bias = torch.nn.Parameter(part, requires_grad=False)
    return weight, bias, sizes


def fuse_layer(layer: Any) -> tuple[Fused | None, Fused | None]:
    """(q/k/v, gate/up) fused for one decoder layer; None where that pair can't be."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv = _fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj], allow_bias=True)
    gate_up = None
    if all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        gate_up = _fuse_linears([mlp.gate_proj, mlp.up_proj], allow_bias=False)
    return qkv, gate_up


class FusedOps:
    """The elementwise parts of a layer, optionally through torch.compile.

    At decode batch sizes the GEMMs take a few microseconds each, and so does every small kernel:
    eager RMSNorm is six kernels, rotary ten, and a layer has ~35 in all, which cost about as much
    as reading the weights (bench/gpu_generation.py: 6.5 ms per step where the roofline is 3.3 ms).
    Compiling just these small functions fuses each into one kernel, and compiles in seconds,
    where compiling the whole step took minutes (and failed on its in-place buffer writes).
    Rotary and the two cache writes of a decode step are one such function: that took the
    single-stream step from 4.60 to 4.44 ms and 64 streams from 5,989 to 6,137 tok/s.

    The norms are numbered: 0 is layer 0's input norm, 2i+1 layer i's post-attention norm, 2i+2
    the next layer's input norm, or the final norm after the last layer.
    """

    def __init__(self, model: Any, compile: bool) -> None:
        import torch
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        base = model.model
        norms: list[Any] = []
        for layer in base.layers:
            norms += [layer.input_layernorm, layer.post_attention_layernorm]
        norms.append(base.norm)
        self._norm_modules = norms
        plain = all(hasattr(m, "weight") and hasattr(m, "variance_epsilon") for m in norms)
        # (weight, eps) per norm when they are plain RMSNorms we can fuse; else call the modules.
        self._norms = [(m.weight, float(m.variance_epsilon)) for m in norms] if plain else None
        self._silu = getattr(model.config, "hidden_act", None) == "silu"
        def rope_write(q: Any, k: Any, v: Any, cos: Any, sin: Any, k_cache: Any, v_cache: Any, slots: Any,
                       positions: Any) -> Any:
            """Decode: rotate q and k, write k and v at each slot's position; one kernel compiled."""
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k_cache[slots, :, positions] = k[:, :, 0]
            v_cache[slots, :, positions] = v[:, :, 0]
            return q

        self._rope_write_eager = rope_write
        rms, add_rms, rope, silu_mul = _rms_norm, _add_rms_norm, apply_rotary_pos_emb, _silu_mul
        if compile:
            rms, add_rms, rope, silu_mul, rope_write = (
                torch.compile(f, dynamic=True, fullgraph=True) for f in (rms, add_rms, rope, silu_mul, rope_write)
            )
        self.rope: Callable[..., tuple[Any, Any]] = rope
        self._rope_write: Callable[..., Any] = rope_write
        self._rms, self._add_rms, self._silu_mul = rms, add_rms, silu_mul

    def rope_write(self, *args: Any) -> Any:
        try:
            return self._rope_write(*args)
        except Exception:
            # Compiling a function that writes into its inputs is the one part here that depends on
            # inductor's in-place handling; if it can't, the same arithmetic runs eagerly.
            if self._rope_write is self._rope_write_eager:
                raise
            logger.warning("compiled rotary + cache write failed; using the eager one", exc_info=True)
            self._rope_write = self._rope_write_eager
            return self._rope_write(*args)

    def norm(self, index: int, x: Any) -> Any:
        if self._norms is None:
            return self._norm_modules[index](x)
        weight, eps = self._norms[index]
        return self._rms(x, weight, eps)

    def add_norm(self, index: int, x: Any, delta: Any) -> tuple[Any, Any]:
        """(x + delta, norm(x + delta)): the residual add and the next norm in one kernel."""
        if self._norms is None:
            x = x + delta
            return x, self._norm_modules[index](x)
        weight, eps = self._norms[index]
        out: tuple[Any, Any] = self._add_rms(x, delta, weight, eps)
        return out

    def act_mul(self, act: Any, gate: Any, up: Any) -> Any:
        return self._silu_mul(gate, up) if self._silu else act(gate) * up


def _rms_norm(x: Any, weight: Any, eps: float) -> Any:
    # Exactly LlamaRMSNorm's arithmetic: float32 statistics, cast back, then the weight.
    h = x.float()
    h = h * (h.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
    return weight * h.to(x.dtype)


def _add_rms_norm(x: Any, delta: Any, weight: Any, eps: float) -> tuple[Any, Any]:
    x = x + delta
    return x, _rms_norm(x, weight, eps)


def _silu_mul(gate: Any, up: Any) -> Any:
    import torch.nn.functional as F

    return F.silu(gate) * up
