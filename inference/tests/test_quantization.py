"""Weight-only int8/int4 quantization on a tiny random Llama, on the CPU.

Run without Django: `python -m pytest inference/tests/test_quantization.py -p no:django -q`.

Tolerances, measured over seeds 0-2 on this model (2 layers, hidden 256, random init): int8 logits
differ from the original by 1.4-1.8% (relative L2) with 92-97% top-1 agreement; int4 (groups of
32 at this width) by 17-18% with 66-80% agreement. Random weights give near-flat logits, which makes these look worse than on
a trained model (bench/quantization.py: SmolLM2 perplexity); the bounds below leave about 2x room.
The kernels themselves are held to the dequantize-then-matmul reference far more tightly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inference.engine.quantization import (
    linear_weight_bytes,
    model_bytes,
    quantization_summary,
    quantize_model,
    validate_quantization,
)

VOCAB = 512


def _tokenizer() -> Any:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    backend = Tokenizer(WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="w1", pad_token="w0")


def _model(dtype: str = "float32", seed: int = 0, tied: bool = False) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=tied, bos_token_id=None, eos_token_id=1, pad_token_id=0,
    )
    return LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()


def _logits(model: Any) -> Any:
    import torch

    ids = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(("mode", "max_relative", "min_agreement"), [("int8", 0.04, 0.85), ("int4", 0.35, 0.5)])
def test_it_keeps_logits_close_to_the_original(dtype: str, mode: str, max_relative: float, min_agreement: float) -> None:
    model = _model(dtype)
    reference = _logits(model)
    quantize_model(model, mode)
    logits = _logits(model)
    relative = float((logits - reference).norm() / reference.norm())
    agreement = float((logits.argmax(-1) == reference.argmax(-1)).float().mean())
    assert relative < max_relative
    assert agreement >= min_agreement


@pytest.mark.parametrize(
    ("dtype", "mode", "kernel"),
    [
        ("bfloat16", "int8", "int8pack"),
        ("bfloat16", "int4", "cpu"),
        # The aten kernels' fp32 paths are not vectorized and lose to dequantize-then-matmul.
        ("float32", "int8", "dequant"),
        ("float32", "int4", "dequant"),
    ],
)
def test_it_replaces_every_decoder_linear_with_the_best_cpu_kernel(dtype: str, mode: str, kernel: str) -> None:
    model = _model(dtype)
    quantize_model(model, mode)
    # 2 layers x (q, k, v, o, gate, up, down); the untied head stays an nn.Linear by default.
    assert quantization_summary(model) == {kernel: 14, "nn.Linear": 1}


@pytest.mark.parametrize(
    ("dtype", "mode", "group", "low", "high"),
    [
        ("float32", "int8", None, 3.8, 4.0),  # 1 byte per weight against 4, plus one scale per row
        ("bfloat16", "int8", None, 1.9, 2.0),
        # Half a byte per weight plus a bf16 scale and zero per group: 2 / (0.5 + 4/128) at 128,
        # a 7B model's group; 2 / (0.5 + 4/32) at 32, the default below 2048 inputs, as here.
        ("bfloat16", "int4", 128, 3.7, 3.8),
        ("bfloat16", "int4", None, 3.15, 3.25),
    ],
)
def test_it_shrinks_linear_weights(dtype: str, mode: str, group: int | None, low: float, high: float) -> None:
    model = _model(dtype)
    before_linear, before_total = linear_weight_bytes(model), model_bytes(model)
    quantize_model(model, mode, group_size=group)
    assert low <= before_linear / linear_weight_bytes(model) <= high
    # Embeddings and the head are untouched, so the whole model shrinks by exactly what the layers saved.
    assert before_total - model_bytes(model) == before_linear - linear_weight_bytes(model)


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("kernel", ["fast", "dequant"])
@pytest.mark.parametrize("rows", [1, 64])  # one decode step; a prefill past the kernels' row limit
def test_it_matches_the_dequantized_weight(mode: str, kernel: str, rows: int) -> None:
    import torch
    from torch import nn

    from inference.engine.quantized_linear import Int4WeightOnlyLinear, Int8WeightOnlyLinear

    torch.manual_seed(0)
    # 576 inputs: SmolLM2's hidden size. bf16, where the CPU kernels are used.
    linear = nn.Linear(576, 192, bias=True).to(torch.bfloat16)
    layer: Int8WeightOnlyLinear | Int4WeightOnlyLinear
    if mode == "int8":
        layer = Int8WeightOnlyLinear(linear, kernel="dequant" if kernel == "dequant" else None)
        weight_error = 0.01  # measured 0.4% for nn.Linear's uniform init
    else:
        layer = Int4WeightOnlyLinear(linear, kernel="dequant" if kernel == "dequant" else None)
        weight_error = 0.08  # measured 6.1% at groups of 32 (bf16 scales)
        assert layer.group_size == 32
    assert (layer.kernel == "dequant") == (kernel == "dequant")
    weight = layer.dequantize()
    original = linear.weight.detach().float()
    assert float((weight.float() - original).norm() / original.norm()) < weight_error
    x = torch.randn(rows, 1, 576, dtype=torch.bfloat16)  # the layer flattens and restores leading dims
    with torch.no_grad():
        expected = nn.functional.linear(x.float(), weight.float(), linear.bias.float())
        # bf16 output rounding (8 bits of mantissa) bounds the difference between the paths.
        torch.testing.assert_close(layer(x).float(), expected, rtol=2e-2, atol=2e-2)


def _tinygemm_pack_reference(nibbles: Any, inner_tiles: int) -> Any:
    """A Python port of aten's CUDA matrix_to_m16n8k16_Bint4_layout, which can't run here."""
    import torch

    n, k = nibbles.shape[0], nibbles.shape[1] * 2
    out = torch.zeros(n // 8, k // (inner_tiles * 16), 32, inner_tiles // 2, dtype=torch.int64)
    for n_tile in range(out.shape[0]):
        for k_outer in range(out.shape[1]):
            for lane in range(32):
                for inner in range(0, inner_tiles, 2):
                    row = n_tile * 8 + lane // 4
                    base = (k_outer * inner_tiles + inner) * 8 + lane % 4
                    v = [int(nibbles[row, col]) for col in (base, base + 4, base + 8, base + 12)]
                    out[n_tile, k_outer, lane, inner // 2] = (
                        (v[3] & 0xF) << 28 | (v[2] & 0xF) << 24 | (v[1] & 0xF) << 20 | (v[0] & 0xF) << 16
                        | (v[3] & 0xF0) << 8 | (v[2] & 0xF0) << 4 | (v[1] & 0xF0) | (v[0] & 0xF0) >> 4
                    )
    return torch.where(out >= 1 << 31, out - (1 << 32), out).to(torch.int32)


@pytest.mark.parametrize(("n", "k", "inner_tiles"), [(16, 128, 8), (8, 64, 4), (24, 96, 2)])
def test_it_inverts_the_cuda_int4_layout(n: int, k: int, inner_tiles: int) -> None:
    import torch

    from inference.engine.quantized_linear import _unpack_tinygemm

    q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=torch.Generator().manual_seed(n))
    nibbles = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
    packed = _tinygemm_pack_reference(nibbles, inner_tiles)
    assert torch.equal(_unpack_tinygemm(packed, n, k), q.to(torch.uint8))


def test_it_leaves_a_tied_head_alone_and_quantizes_an_untied_one_on_request() -> None:
    from torch import nn

    tied = _model(tied=True)
    quantize_model(tied, "int8", include_lm_head=True)
    # Quantizing a head that shares the embedding matrix would keep both copies: skipped.
    assert type(tied.lm_head) is nn.Linear
    assert tied.lm_head.weight is tied.model.embed_tokens.weight

    untied = _model()
    quantize_model(untied, "int8", include_lm_head=True)
    assert quantization_summary(untied) == {"dequant": 15}
    assert isinstance(untied.model.embed_tokens, nn.Embedding)


def test_it_leaves_layers_the_int4_kernels_cannot_take() -> None:
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(100, 64), nn.Linear(64, 32))  # 100 inputs: no group of 32 divides it
    quantize_model(model, "int4")
    assert type(model[0]) is nn.Linear
    assert quantization_summary(model) == {"nn.Linear": 1, "dequant": 1}
    assert model(torch.randn(2, 100)).shape == (2, 32)


def test_it_validates_the_mode() -> None:
    assert validate_quantization(None) == "none"
    assert validate_quantization(" INT4 ") == "int4"
    model = _model()
    assert quantize_model(model, "none") is model
    assert quantization_summary(model) == {"nn.Linear": 15}
    with pytest.raises(ValueError, match="int8"):
        quantize_model(model, "fp8")


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_it_generates_greedily_through_the_engine(mode: str) -> None:
    import torch

    from inference.engine import Engine, SamplingParams

    model, tokenizer = _model(), _tokenizer()
    quantize_model(model, mode)
    prompt = tokenizer("w5 w17 w99 w300 w42", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=12,
                             min_new_tokens=12, eos_token_id=None, pad_token_id=0)
    expected = tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
    engine = Engine.from_model(model, tokenizer, batching="simple")
    try:
        text = engine.generate(prompt[0].tolist(), SamplingParams(max_new_tokens=12))
    finally:
        engine.close()
    # The engine may stop at end-of-sequence (w1) where generate was told not to.
    assert text and expected.startswith(text)


def test_it_quantizes_at_load(tmp_path: Path) -> None:
    from inference.engine import load_model

    _model().save_pretrained(tmp_path)
    _tokenizer().save_pretrained(tmp_path)
    model, _ = load_model(tmp_path, device="cpu", dtype="bf16", quantization="int4")
    assert quantization_summary(model) == {"cpu": 14, "nn.Linear": 1}
    with pytest.raises(ValueError, match="quantization"):
        load_model(tmp_path, quantization="int3")
