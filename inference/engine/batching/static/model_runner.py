"""The static batcher's model runner: the Llama-family forward over a static slot cache.

What is hand-written here, and why it is small: the decode and prefill forward for Llama-family
decoders (Llama, Qwen2, Mistral: the DeepSeek-LLM and SmolLM2 architecture). It reuses the model's
own modules (norms, projections, MLP, rotary embedding), so quantized linear layers or LoRA-wrapped
ones work unchanged; only the attention's cache handling is ours.

The cache is ``slots x max_context`` per layer, and each row carries its own positions, so a
request can be admitted into a free slot while others decode. A decode step reads and writes only
static buffers, so on CUDA it is captured once per (batch bucket, context bucket) as a CUDA graph
and replayed. Greedy argmax happens inside the step; rows that sample are redrawn after it.
Everything here runs on the scheduler's loop thread.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ...request import EngineError, SamplingParams
from ..base import vocab_size
from .ops import FusedOps, fuse_layer
from .sampler import sample

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = frozenset({"llama", "qwen2", "mistral"})
# Context lengths are rounded up to this for CUDA graphs, so one graph serves 256 positions.
GRAPH_CONTEXT_STEP = 256


def supports(model: Any) -> str | None:
    """None when the static batcher can serve `model`, else the reason it can't."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {sorted(SUPPORTED_MODEL_TYPES)}"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention is not supported"
    base = getattr(model, "model", None)
    for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(base, name):
            return f"model has no model.{name}"
    return None


def cache_sizing(model: Any, max_batch: int, max_context: int | None, cache_bytes: int | None) -> tuple[int, int]:
    """(slots, context per slot) for the static cache within its memory budget."""
    import torch

    config = model.config
    param = next(model.parameters())
    on_cuda = param.device.type == "cuda"
    model_context = int(getattr(config, "max_position_embeddings", 0) or 2048)
    context = max_context or min(model_context, 4096 if on_cuda else 2048)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    per_slot = 2 * int(config.num_hidden_layers) * kv_heads * head_dim * context * param.element_size()
    if cache_bytes is None:
        if on_cuda:
            free, _total = torch.cuda.mem_get_info(param.device)
            # Leave room for prefill activations, CUDA graphs and the allocator's slack.
            cache_bytes = int(free * 0.8) - (4 << 30)
        else:
            cache_bytes = 1 << 30
    slots = min(max_batch, cache_bytes // per_slot)
    if slots < 1:
        raise EngineError(
            f"no room for one {context}-token slot ({per_slot >> 20} MiB) in a"
            f" {max(cache_bytes, 0) >> 20} MiB cache budget"
        )
    return int(slots), int(context)


class ModelRunner:
    """The model, its fused weights and kernels, the KV cache and the decode step's static buffers."""

    def __init__(self, model: Any, slots: int, max_context: int, cuda_graphs: bool | None, compile: bool | None) -> None:
        """Fuse the weights, build the kernels and allocate the cache (on the loop's thread)."""
        import torch

        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.on_cuda = self.device.type == "cuda"
        self.cuda_graphs = self.on_cuda if cuda_graphs is None else (cuda_graphs and self.on_cuda)
        self.slots = slots
        self.max_context = max_context

        config = model.config
        self._layers = list(model.model.layers)
        self._n_heads = int(config.num_attention_heads)
        self._n_kv = int(getattr(config, "num_key_value_heads", None) or self._n_heads)
        self._head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self._n_heads)
        self._gqa = self._n_kv != self._n_heads
        self._vocab = vocab_size(model)

        # One GEMM instead of three (q, k, v) and two (gate, up) per layer: fewer kernels and
        # better bandwidth use at small batch. The model's own Linear layers keep working: their
        # weights become views into the fused ones, so no memory is duplicated.
        model.requires_grad_(False)  # serving only; compiled code then needs no autograd graph
        self._fused = [fuse_layer(layer) for layer in self._layers]
        self.ops = FusedOps(model, compile=self.on_cuda if compile is None else compile)

        shape = (slots, self._n_kv, max_context, self._head_dim)
        # Zeroed, not empty: masked positions still enter the attention matmuls, and NaN garbage
        # there would poison every row (NaN * 0 is NaN).
        self.k_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self._layers]
        self.v_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self._layers]
        self._tokens = torch.zeros(slots, dtype=torch.long, device=self.device)  # next input per slot
        self._positions = torch.zeros(slots, dtype=torch.long, device=self.device)
        self._arange = torch.arange(max_context, device=self.device)
        self._slot_ids = torch.arange(slots, device=self.device)
        self._logits = torch.zeros(slots, self._vocab, dtype=torch.float32, device=self.device)
        self.graphs: dict[tuple[int, int], Any] = {}
        self._graph_pool: Any = None

    def release(self) -> None:
        """Frees the slot cache, the captured graphs and the fused weights; the runner is unusable
        afterwards. The fused weights matter too: the model's layers are views into them only until
        the next runner fuses the same model again, which would otherwise hold both copies."""
        self._fused = []
        self.k_cache, self.v_cache = [], []
        self.graphs.clear()
        self._graph_pool = None
        self._logits = self._logits.new_zeros(0)

    # ---- buckets

    def batch_bucket(self, needed: int) -> int:
        """The batch a decode step runs for slots [0, needed): a power of two under CUDA graphs."""
        if not self.cuda_graphs:
            return needed
        bucket = 1
        while bucket < needed:
            bucket *= 2
        return min(bucket, self.slots)

    def context_bucket(self, needed: int) -> int:
        """The context a decode step attends over: rounded up to a graph's step under CUDA graphs."""
        if not self.cuda_graphs:
            return needed
        return min(self.max_context, -(-needed // GRAPH_CONTEXT_STEP) * GRAPH_CONTEXT_STEP)

    # ---- prefill

    def prefill(self, prompts: list[list[int]], slots: list[int], params: Sequence[SamplingParams]) -> list[int]:
        """Run the prompts, fill their slots' cache, and return each one's first sampled token."""
        import torch
        import torch.nn.functional as F

        n = len(prompts)
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        ids = torch.zeros(n, width, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, : lengths[row]] = torch.tensor(prompt)
        ids = ids.to(self.device)
        positions = self._arange[:width].unsqueeze(0).expand(n, width)
        slot_index = torch.tensor(slots, device=self.device)
        base = self.model.model
        ops = self.ops
        x = base.embed_tokens(ids)
        cos, sin = base.rotary_emb(x, positions)
        h = ops.norm(0, x)
        for i, layer in enumerate(self._layers):
            q, k, v = self._qkv(i, h)
            q, k = ops.rope(q, k, cos, sin)
            # Right padding past a prompt's end writes junk beyond its length: masked, then overwritten.
            self.k_cache[i][slot_index, :, :width] = k
            self.v_cache[i][slot_index, :, :width] = v
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self._gqa)
            x, h = ops.add_norm(2 * i + 1, x, layer.self_attn.o_proj(o.transpose(1, 2).reshape(n, width, -1)))
            x, h = ops.add_norm(2 * i + 2, x, self._mlp(i, h))
        last = h[torch.arange(n, device=self.device), torch.tensor(lengths, device=self.device) - 1]
        logits = self.model.lm_head(last).float()
        tokens = sample(logits, params)
        self._tokens.index_copy_(0, slot_index, tokens)
        return [int(t) for t in tokens.tolist()]

    # ---- decode

    def launch_decode(self, batch: int, context: int, host_positions: Any) -> None:
        """Queue one decode step for slots [0, batch) at `host_positions`; no wait for the GPU."""
        self._positions[:batch].copy_(host_positions[:batch], non_blocking=True)
        if self.cuda_graphs:
            self.graph(batch, context).replay()
        else:
            self._decode(batch, context)

    def resample(self, slots: list[int], params: Sequence[SamplingParams]) -> None:
        """Redraw the last step's tokens of these slots by their own sampling settings."""
        import torch

        rows = torch.tensor(slots, device=self.device)
        self._tokens.index_copy_(0, rows, sample(self._logits.index_select(0, rows), params))

    def copy_tokens(self, host_tokens: Any, batch: int) -> None:
        """Start copying the last step's tokens of slots [0, batch) to the host."""
        host_tokens[:batch].copy_(self._tokens[:batch], non_blocking=True)

    def _decode(self, batch: int, context: int) -> None:
        """One token for slots [0, batch): reads and writes only the static buffers (graph-safe)."""
        import torch.nn.functional as F

        tokens = self._tokens[:batch]
        positions = self._positions[:batch]
        slots = self._slot_ids[:batch]
        base = self.model.model
        ops = self.ops
        x = base.embed_tokens(tokens.unsqueeze(1))
        cos, sin = base.rotary_emb(x, positions.unsqueeze(1))
        mask = (self._arange[:context].unsqueeze(0) <= positions.unsqueeze(1))[:, None, None, :]
        h = ops.norm(0, x)
        for i, layer in enumerate(self._layers):
            q, k, v = self._qkv(i, h)
            k_cache, v_cache = self.k_cache[i], self.v_cache[i]
            q = ops.rope_write(q, k, v, cos, sin, k_cache, v_cache, slots, positions)
            o = F.scaled_dot_product_attention(
                q, k_cache[:batch, :, :context], v_cache[:batch, :, :context], attn_mask=mask, enable_gqa=self._gqa
            )
            x, h = ops.add_norm(2 * i + 1, x, layer.self_attn.o_proj(o.transpose(1, 2).reshape(batch, 1, -1)))
            x, h = ops.add_norm(2 * i + 2, x, self._mlp(i, h))
        logits = self.model.lm_head(h[:, 0])
        self._logits[:batch].copy_(logits)
        tokens.copy_(logits.argmax(dim=-1))

    def _qkv(self, i: int, h: Any) -> tuple[Any, Any, Any]:
        """Layer i's q, k and v for hidden states [batch, tokens, hidden], as [batch, heads, tokens, dim]."""
        import torch
        import torch.nn.functional as F

        qkv = self._fused[i][0]
        if qkv is None:
            attn = self._layers[i].self_attn
            q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
        else:
            weight, bias, sizes = qkv
            q, k, v = torch.split(F.linear(h, weight, bias), sizes, dim=-1)
        batch, tokens = h.shape[0], h.shape[1]
        return (
            q.view(batch, tokens, self._n_heads, self._head_dim).transpose(1, 2),
            k.view(batch, tokens, self._n_kv, self._head_dim).transpose(1, 2),
            v.view(batch, tokens, self._n_kv, self._head_dim).transpose(1, 2),
        )

    def _mlp(self, i: int, h: Any) -> Any:
        import torch
        import torch.nn.functional as F

        gate_up = self._fused[i][1]
        mlp = self._layers[i].mlp
        if gate_up is None:
            return mlp(h)
        weight, _bias, sizes = gate_up
        gate, up = torch.split(F.linear(h, weight), sizes, dim=-1)
        return mlp.down_proj(self.ops.act_mul(mlp.act_fn, gate, up))

    # ---- CUDA graphs

    def graph(self, batch: int, context: int) -> Any:
        """The CUDA graph for this (batch, context) bucket, captured on first use."""
        import torch

        graph = self.graphs.get((batch, context))
        if graph is not None:
            return graph
        saved = self._tokens[:batch].clone()
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]  # torch leaves it untyped
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            # One eager run first: it picks the kernels and settles the allocator. Its cache
            # writes are the same ones the replay makes; its new tokens are put back.
            self._decode(batch, context)
            self._tokens[:batch].copy_(saved)
        torch.cuda.current_stream().wait_stream(stream)
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._graph_pool):
            self._decode(batch, context)
        self.graphs[(batch, context)] = graph
        return graph

    def capture_all(self) -> None:
        """Every (batch, context) bucket's graph, so no request waits for a capture later."""
        import torch

        batches = sorted({self.batch_bucket(n) for n in range(1, self.slots + 1)})
        contexts = range(GRAPH_CONTEXT_STEP, self.max_context + GRAPH_CONTEXT_STEP, GRAPH_CONTEXT_STEP)
        for batch in batches:
            for context in contexts:
                try:
                    self.graph(batch, min(context, self.max_context))
                except torch.OutOfMemoryError:
                    logger.warning("no memory to capture the decode graph for batch %s, context %s", batch, context)
                    return
