"""Weight-only quantized replacements for `nn.Linear`: int8 per output channel, int4 per group.

This module imports torch at module level; only `quantization.quantize_model` imports it, lazily,
so `inference.engine` stays cheap to import. We write these few kernels' glue ourselves because the
bundled routes (bitsandbytes, torchao, transformers' quantizers) are not installed on the GPU image,
while the aten ops below ship inside torch itself.

Each module is a plain `nn.Module` called as `layer(x)`, so HF's forward and any hand-written
forward that calls `self_attn.q_proj(x)` work unchanged. The packed layouts are device specific
(the CUDA int4 layout is tinygemm's tensor-core tiling), so quantize after the model is on its
final device and do not move it afterwards.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

Int8Kernel = Literal["int8pack", "dequant"]
Int4Kernel = Literal["tinygemm", "cpu", "dequant"]

# A fast kernel must match the dequantize-then-matmul reference on a probe row within this
# fraction of the output's largest magnitude. A wrong packing layout gives errors near 100%, while
# bf16 rounding differences between the two paths stay well under 1%.
_PROBE_TOLERANCE = 0.05


def _matches_reference(fast: torch.Tensor, reference: torch.Tensor) -> bool:
    scale = reference.float().abs().max().clamp(min=1e-6)
    return bool(((fast.float() - reference.float()).abs().max() / scale) <= _PROBE_TOLERANCE)


# Up to how many rows (tokens in one forward) each aten kernel beats dequantize-then-matmul, per
# activation dtype. None of these kernels tiles over rows the way a GEMM does, so their time grows
# linearly with the rows: they win on decode steps and lose on prefill, where dequantizing once and
# handing the matmul to cuBLAS / oneDNN amortizes over the rows. Measured with
# `bench/gpu_quantization.py --kernels` (H200, torch 2.11) and `--device cpu --hidden 576` (this
# 2-core AVX-512/AMX Xeon, torch 2.13); see the report in issue 6.
_KERNEL_MAX_ROWS: dict[tuple[str, torch.dtype], int] = {
    # CPU bf16 (SmolLM2's 1536x576): 2.1x faster than bf16 F.linear at 1 row, 1.2x at 4, 0.7x at 8.
    ("int8pack", torch.bfloat16): 4,
    ("int8pack", torch.float16): 4,
    # CPU fp32: the kernel's fp32 path is not vectorized; it loses to dequantizing even at one
    # row (101 us against 34 us for 576x576).
    ("int8pack", torch.float32): 0,
    # H200 bf16, 11008x4096: tinygemm takes 33 us at 8 rows, 202 at 64, 794 at 256 (it re-reads
    # the weight per 16-row tile); unpacking its layout and dequantizing for cuBLAS costs ~600 us
    # in eager mode whatever the rows. bf16 cuBLAS is 27-34 us up to 256 rows: int4 trades batch
    # throughput for memory and single-stream latency.
    ("tinygemm", torch.bfloat16): 128,
}


def _kernel_max_rows(kernel: str, dtype: torch.dtype) -> int:
    return _KERNEL_MAX_ROWS.get((kernel, dtype), 0)


# ---------------------------------------------------------------------------------------- int8


class Int8WeightOnlyLinear(nn.Module):
    """y = x @ (q * s)^T + b, with int8 `qweight` [out, in] and one scale per output channel."""

    qweight: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear, kernel: Int8Kernel | None = None) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        dtype = weight.dtype
        # Symmetric per-channel: the largest magnitude of each row maps to 127.
        w = weight.float()
        scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
        # Quantize against the scale as stored (in the model's dtype), so dequantizing reproduces
        # the nearest grid point rather than one shifted by the scale's rounding.
        scales = scales.to(dtype)
        q = torch.round(w / scales.float()[:, None]).clamp(-128, 127).to(torch.int8)
        self.register_buffer("qweight", q.contiguous())
        self.register_buffer("scales", scales.contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        # `kernel` forces a path (benches compare them); None picks the one that works here.
        self.kernel: Int8Kernel = kernel or self._pick_kernel()
        # Inputs with more rows than this take the dequantize path (see _KERNEL_MAX_ROWS).
        self.max_kernel_rows = _kernel_max_rows(self.kernel, dtype) if kernel is None else 1 << 30

    def dequantize(self) -> torch.Tensor:
        """The float weight [out, in] this layer multiplies by, in the model's dtype."""
        return self.qweight.to(self.scales.dtype) * self.scales[:, None]

    def _pick_kernel(self) -> Int8Kernel:
        # On CUDA, aten's int8 kernel is a naive one-thread-per-output loop (int8mm.cu: fp32 math,
        # uncoalesced weight reads), measured 2-500x slower than dequantize-then-cuBLAS on an H200,
        # so CUDA always takes the dequantize path. That path saves memory, not time: it ran at
        # 0.72x of bf16's decode speed at batch 1 under torch.compile.
        if self.qweight.device.type != "cpu" or _kernel_max_rows("int8pack", self.scales.dtype) == 0:
            return "dequant"
        probe = torch.randn(1, self.in_features, dtype=self.scales.dtype, device=self.qweight.device)
        try:
            fast = torch.ops.aten._weight_int8pack_mm(probe, self.qweight, self.scales)
        except (RuntimeError, NotImplementedError, AttributeError) as exc:
            logger.debug("int8 kernel unavailable for %s: %s", self.scales.dtype, exc)
            return "dequant"
        return "int8pack" if _matches_reference(fast, F.linear(probe, self.dequantize())) else "dequant"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.kernel == "int8pack" and x2.shape[0] <= self.max_kernel_rows:
            # The kernel wants a 2-D contiguous input in the scales' dtype.
            y: torch.Tensor = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.qweight, self.scales)
        elif x2.dtype == torch.float16:
            # fp16 overflows at 65504: int8 values times activations summed over 4096+ inputs can
            # exceed it, so scale the weight before the matmul rather than after.
            y = F.linear(x2, self.dequantize())
        else:
            # bf16/fp32 have fp32's range, so scaling the output is safe and saves a pass over the
            # weight in eager mode.
            y = F.linear(x2, self.qweight.to(x2.dtype)) * self.scales
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, kernel={self.kernel}, max_kernel_rows={self.max_kernel_rows}")


# ---------------------------------------------------------------------------------------- int4


def int4_group_size(in_features: int, preferred: int | None = None) -> int | None:
    """The int4 group size for a layer with `in_features` inputs; None if no supported size divides it.

    By default 128 for layers of 2048+ inputs, 32 below. A 7B model's 4096/11008-wide layers lose
    little at 128, where scales and zeros add 0.03 byte per weight. Small models are more fragile:
    SmolLM2-135M (576/1536 wide) lost 34% perplexity at groups of 64/128 but almost nothing at 32,
    which is also its GGUF's own Q4_1 block, so its weights already sit on that grid. The kernels
    take 32, 64, 128 or 256; the largest of those up to `preferred` that divides in_features wins.
    """
    if preferred is None:
        preferred = 128 if in_features >= 2048 else 32
    for size in (256, 128, 64, 32):
        if size <= preferred and in_features % size == 0:
            return size
    return None


def _unpack_tinygemm(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Invert `_convert_weight_to_int4pack` (CUDA): the int4 values [n, k] as uint8 in 0..15.

    The tinygemm layout [n/8, k/(tiles*16), 32, tiles/2] int32 is a fixed permutation of nibbles
    (matrix_to_m16n8k16_Bint4_layout in aten's int4mm.cu): lane t of a warp holds row t // 4 of an
    8-row tile, and each int32 holds, low nibble first, the high nibbles of four input bytes and
    then their low nibbles, from columns t % 4 (+4, +8, +12) of two 16-column k-tiles. Undoing it is
    one view, one permute and one copy, so the large-batch path can dequantize without a second
    copy of the weight in another layout.
    """
    n_tiles, k_outer, _, half = packed.shape
    # Split lane t into (row in tile, column group) and the int32 into its 4 bytes (little-endian).
    data = packed.contiguous().view(torch.uint8).view(n_tiles, k_outer, 8, 4, half, 4)
    # Nibble index within an int32 = 2 * byte + position = 4 * (low half of its source byte)
    # + 2 * (second k-tile) + (odd source byte), hence the (2, 2, 2) split.
    nibbles = torch.stack([data & 0xF, data >> 4], dim=-1).view(n_tiles, k_outer, 8, 4, half, 2, 2, 2)
    # Columns run (outer tile, inner tile pair, second k-tile, odd byte, column group, low half).
    return nibbles.permute(0, 2, 1, 4, 6, 7, 3, 5).reshape(n, k)


class Int4WeightOnlyLinear(nn.Module):
    """Asymmetric group-wise int4: w = (q - 8) * scale + zero per group of `group_size` inputs.

    That is tinygemm's convention (the CUDA and CPU aten kernels share it): `scales_and_zeros` is
    [in / group, out, 2], holding each group's scale and its value at q = 8. `packed` holds the
    values in the layout of `kernel`: tinygemm's tiles on CUDA, the CPU kernel's blocks on the CPU,
    or plain nibbles (two per byte, even input in the high nibble) for the dequantize path.
    """

    packed: torch.Tensor
    scales_and_zeros: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear, group_size: int | None = None, kernel: Int4Kernel | None = None) -> None:
        """`group_size` None picks by width (int4_group_size); `kernel` forces a path ("dequant"
        skips the aten kernels), None picks the fastest that works."""
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        group = int4_group_size(self.in_features, group_size)
        if group is None:
            raise ValueError(f"in_features={self.in_features} is not a multiple of 32")
        self.group_size = group
        weight = linear.weight.detach()
        dtype = weight.dtype
        n, k = weight.shape
        w = weight.float().reshape(n, k // group, group)
        low = w.amin(dim=-1)
        high = w.amax(dim=-1)
        scales = ((high - low).clamp(min=1e-6) / 15.0).to(dtype)
        zeros = (low + 8 * scales.float()).to(dtype)
        # As for int8: quantize against the parameters as stored, after their rounding to `dtype`.
        minimum = zeros.float() - 8 * scales.float()
        q = torch.round((w - minimum[..., None]) / scales.float()[..., None]).clamp(0, 15)
        q = q.to(torch.int32).reshape(n, k)
        self.register_buffer("scales_and_zeros", torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        # Two 4-bit values per byte, even input index in the high nibble: the layout that
        # torch's CUDA _convert_weight_to_int4pack expects, and our dequantize path's own.
        nibbles = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
        self.kernel: Int4Kernel = "dequant"
        self.register_buffer("packed", nibbles.contiguous())
        if kernel != "dequant":
            self.kernel = self._try_fast_kernel(q, nibbles, only=kernel)
        # Inputs with more rows than this take the dequantize path (see _KERNEL_MAX_ROWS). The CPU
        # kernel's layout depends on the instruction set and is not inverted here, so it serves all.
        if self.kernel == "cpu" or kernel is not None:
            self.max_kernel_rows = 1 << 30
        else:
            self.max_kernel_rows = _kernel_max_rows(self.kernel, dtype)

    def _candidates(self) -> list[tuple[Int4Kernel, int]]:
        """(kernel, inner k tiles) pairs whose shape rules this layer meets, best first."""
        device = self.packed.device.type
        dtype = self.scales_and_zeros.dtype
        k = self.in_features
        if device == "cuda" and dtype == torch.bfloat16 and self.out_features % 8 == 0:
            # tinygemm reads bf16 activations only, with k a multiple of inner_k_tiles * 16;
            # 8 inner tiles give the widest (16-byte) loads.
            return [("tinygemm", tiles) for tiles in (8, 4, 2) if k % (tiles * 16) == 0][:1]
        if device == "cpu" and dtype != torch.float32 and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            # Its fp32 path is not vectorized: 4-30x slower than dequantizing on a Xeon with AMX.
            return [("cpu", 8)]
        return []

    def _try_fast_kernel(self, q: torch.Tensor, nibbles: torch.Tensor, only: Int4Kernel | None) -> Int4Kernel:
        """An aten int4 kernel that takes this layer and reproduces the reference, its packed weight
        now in `packed`; else "dequant"."""
        dtype = self.scales_and_zeros.dtype
        probe = torch.randn(1, self.in_features, dtype=dtype, device=self.packed.device)
        reference = F.linear(probe, self.dequantize())
        for kernel, tiles in self._candidates():
            if only is not None and kernel != only:
                continue
            try:
                if kernel == "tinygemm":
                    packed = torch.ops.aten._convert_weight_to_int4pack(nibbles, tiles)
                    fast = torch.ops.aten._weight_int4pack_mm(probe, packed, self.group_size, self.scales_and_zeros)
                else:
                    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, tiles)
                    fast = torch.ops.aten._weight_int4pack_mm_for_cpu(
                        probe, packed, self.group_size, self.scales_and_zeros)
            except (RuntimeError, NotImplementedError, AttributeError) as exc:
                logger.debug("int4 kernel %s unavailable for %s: %s", kernel, tuple(q.shape), exc)
                continue
            if not _matches_reference(fast, reference):
                logger.warning("int4 kernel %s disagrees with the reference on %s", kernel, tuple(q.shape))
                continue
            if kernel == "tinygemm" and not torch.equal(_unpack_tinygemm(packed, *q.shape), q.to(torch.uint8)):
                # The large-batch path unpacks this layout; a torch that changed it keeps plain nibbles.
                logger.warning("tinygemm layout changed in this torch; int4 dequantizes on %s", tuple(q.shape))
                continue
            self.packed = packed.contiguous()
            return kernel
        return "dequant"

    def _values(self) -> torch.Tensor:
        """The int4 values [out, in] as uint8 in 0..15 (not for the CPU kernel's opaque layout)."""
        if self.kernel == "tinygemm":
            return _unpack_tinygemm(self.packed, self.out_features, self.in_features)
        return torch.stack([self.packed >> 4, self.packed & 0xF], dim=-1).view(self.out_features, self.in_features)

    def dequantize(self) -> torch.Tensor:
        """The float weight [out, in] this layer multiplies by, in the model's dtype."""
        n, k, group = self.out_features, self.in_features, self.group_size
        if self.kernel == "cpu":
            # Its layout is opaque; recover the weight by multiplying the identity (tests, tools).
            eye = torch.eye(k, dtype=self.scales_and_zeros.dtype, device=self.packed.device)
            return self._fast_mm(eye).t().contiguous()
        params = self.scales_and_zeros.transpose(0, 1).contiguous()  # [out, groups, 2]: small
        scales = params[..., :1]
        low = params[..., 1:] - 8 * scales  # the group's value at q = 0
        q = self._values().view(n, k // group, group)
        # One fused multiply-add over the weight instead of a subtract, a multiply and an add.
        return torch.addcmul(low, q.to(scales.dtype), scales).view(n, k)

    def _fast_mm(self, x2: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor
        if self.kernel == "tinygemm":
            y = torch.ops.aten._weight_int4pack_mm(x2, self.packed, self.group_size, self.scales_and_zeros)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, self.scales_and_zeros)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.kernel != "dequant" and x2.shape[0] <= self.max_kernel_rows:
            y = self._fast_mm(x2.contiguous())
        else:
            y = F.linear(x2, self.dequantize())
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, group_size={self.group_size}, kernel={self.kernel}, "
                f"max_kernel_rows={self.max_kernel_rows}")
