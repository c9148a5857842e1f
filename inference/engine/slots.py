"""Static-slot continuous batching: one KV cache slot per running request, one decode step for all.

Why not only transformers' ContinuousBatchingManager: on an H200 with the 7B shape it reached
~600 tok/s at 64 streams (bench/gpu_generation.py), while a CUDA-graphed decode step over a static
cache reaches several times that. Its paged cache and per-step Python scheduling cost more than the
forward pass itself. transformers' own static cache, on the other hand, keeps one position for the
whole batch, so it can't admit a request while others run. This backend keeps both properties: a
static cache (``slots x max_context`` per layer) whose rows carry their own positions, and a loop
that admits new requests into free slots between decode steps.

What is hand-written here, and why it is small: the decode and prefill forward for Llama-family
decoders (Llama, Qwen2, Mistral: the DeepSeek-LLM and SmolLM2 architecture). It reuses the model's
own modules (norms, projections, MLP, rotary embedding), so quantized linear layers or LoRA-wrapped
ones work unchanged; only the attention's cache handling is ours.

The loop (one thread, the only one that touches the GPU):
1. admit: prefill waiting requests into free slots, within a token budget, and stream their
   first token. A prefill step is the longest a running request waits for its next token.
2. launch one decode step for every running slot: a CUDA graph replay per (batch bucket, context
   bucket) on CUDA, the same function eagerly elsewhere. Greedy argmax happens inside the step;
   rows that sample are redrawn after it.
3. deliver the *previous* step's tokens while the GPU runs this one, so Python's detokenizing and
   stop-string checks overlap the forward pass. A request that ended one step ago has one wasted
   token computed for it, which is cheaper than a sync per step.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import RequestHandle

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = frozenset({"llama", "qwen2", "mistral"})
# Context lengths are rounded up to this for CUDA graphs, so one graph serves 256 positions.
_GRAPH_CONTEXT_STEP = 256
# Decode steps queued on the GPU ahead of Python's delivery of their tokens. Deeper hides more
# host jitter (GIL contention with the consumer threads); each level costs a finished request
# one more wasted token.
_PIPELINE_DEPTH = 2
# The most prompt tokens one prefill step may take: bounds how long running requests wait.
_DEFAULT_PREFILL_TOKENS = 8192


def supports(model: Any) -> str | None:
    """None when this backend can serve `model`, else the reason it can't."""
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


@dataclass
class _Request:
    handle: RequestHandle
    original: list[int]  # the prompt as submitted
    max_new: int
    prompt: list[int] = field(default_factory=list)  # what to prefill: the prompt, plus output after a preemption
    generated: list[int] = field(default_factory=list)
    slot: int | None = None
    pos: int = 0  # next cache position to write
    launched: int = 0  # tokens sampled for this request so far, including undelivered ones
    done: bool = False


@dataclass
class _Step:
    """A launched decode step whose tokens are not yet delivered."""

    owners: list[tuple[int, _Request]]
    tokens: Any  # pinned host tensor, filled asynchronously
    event: Any  # CUDA event, or None on the CPU


class SlotBackend:
    """Runs requests for one `Engine` on a static slot cache; all public methods are thread-safe."""

    def __init__(
        self,
        model: Any,
        eos_ids: set[int],
        slots: int,
        max_context: int,
        cuda_graphs: bool | None = None,
        prefill_tokens: int = _DEFAULT_PREFILL_TOKENS,
        compile: bool | None = None,
    ) -> None:
        """A started backend with exactly these sizes (`start` checks the model and sizes them)."""
        self.model = model
        self.eos_ids = eos_ids
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.on_cuda = self.device.type == "cuda"
        self.cuda_graphs = self.on_cuda if cuda_graphs is None else (cuda_graphs and self.on_cuda)
        self.slots = slots
        self.max_context = max_context
        self.prefill_tokens = max(prefill_tokens, max_context)
        self.max_active = slots  # shrinks on out-of-memory
        self.oom_events = 0
        # Tests set this to raise inside a step ("prefill" or "decode"), e.g. an injected OOM.
        self.fault_hook: Callable[[str], None] | None = None

        config = model.config
        base = model.model
        self._layers = list(base.layers)
        self._n_heads = int(config.num_attention_heads)
        self._n_kv = int(getattr(config, "num_key_value_heads", None) or self._n_heads)
        self._head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self._n_heads)
        self._gqa = self._n_kv != self._n_heads
        self._vocab = int(
            config.get_text_config().vocab_size if hasattr(config, "get_text_config") else config.vocab_size
        )

        self._lock = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._owner: list[_Request | None] = [None] * slots
        self._free: list[int] = list(range(slots))
        heapq.heapify(self._free)
        self._by_id: dict[str, _Request] = {}
        self._closed = False
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._pending: deque[_Step] = deque()
        # Everything that computes with torch happens on the loop's thread, the set-up included
        # (see `call` for why one thread); the constructor waits for it.
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._loop, args=(ready, compile), name="engine-slots", daemon=True)
        self._thread.start()
        ready.result()

    def _setup(self, compile: bool | None) -> None:
        """Fuse the weights, build the kernels and allocate the cache (on the loop's thread)."""
        import torch

        model, slots, max_context = self.model, self.slots, self.max_context
        # One GEMM instead of three (q, k, v) and two (gate, up) per layer: fewer kernels and
        # better bandwidth use at small batch. The model's own Linear layers keep working: their
        # weights become views into the fused ones, so no memory is duplicated.
        model.requires_grad_(False)  # serving only; compiled code then needs no autograd graph
        self._fused = [_fuse_layer(layer) for layer in self._layers]
        self._ops = _Ops(model, compile=self.on_cuda if compile is None else compile)

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
        pin = self.on_cuda
        # Host buffers for the asynchronous copies, one per step that can be in flight, plus one:
        # a buffer is reused only after the step that used it was delivered (synchronized).
        ring = _PIPELINE_DEPTH + 1
        self._host_positions = [torch.zeros(slots, dtype=torch.long, pin_memory=pin) for _ in range(ring)]
        self._host_tokens = [torch.zeros(slots, dtype=torch.long, pin_memory=pin) for _ in range(ring)]
        self._flip = 0
        self._graphs: dict[tuple[int, int], Any] = {}
        self._graph_pool: Any = None

    @classmethod
    def start(
        cls,
        model: Any,
        eos_ids: set[int],
        *,
        max_batch: int,
        max_context: int | None,
        cache_bytes: int | None,
        compile: bool | None,
    ) -> SlotBackend:
        """Check the model, size the cache within its budget, start, and capture the graphs.

        Out of memory while allocating halves the slots and tries again: free memory was measured,
        but other processes may share the GPU.
        """
        import torch

        from .engine import EngineError

        reason = supports(model)
        if reason:
            raise EngineError(reason)
        slots, context = _cache_sizing(model, max_batch, max_context, cache_bytes)
        while True:
            try:
                backend = cls(model, eos_ids, slots=slots, max_context=context, compile=compile)
                break
            except torch.OutOfMemoryError:
                if slots == 1:
                    raise
                slots //= 2
                logger.warning("out of memory allocating the KV cache; retrying with %d slots", slots)
        backend.warm_up()
        return backend

    # ------------------------------------------------------------------ public, any thread

    def submit(self, handle: RequestHandle, prompt_ids: list[int]) -> None:
        from .engine import EngineError

        if len(prompt_ids) >= self.max_context:
            handle._finish(
                "error", f"the prompt has {len(prompt_ids)} tokens; this engine's context holds {self.max_context}"
            )
            return
        # A request may not outgrow its slot: the answer ends by length at the context's end.
        max_new = min(handle.params.max_new_tokens, self.max_context - len(prompt_ids))
        with self._lock:
            if self._closed:
                raise EngineError("engine is closed")
            request = _Request(handle, list(prompt_ids), max_new, prompt=list(prompt_ids))
            self._by_id[handle.id] = request
            self._waiting.append(request)
            self._lock.notify_all()

    def cancel(self, handle: RequestHandle) -> None:
        """Drop a request and free its slot now; a step already running for it is ignored."""
        with self._lock:
            request = self._by_id.pop(handle.id, None)
            if request is None:
                return
            request.done = True
            if request.slot is None:
                try:
                    self._waiting.remove(request)
                except ValueError:
                    pass
            else:
                self._release(request)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on this loop's thread, between two steps, and return its result.

        Why: torch on the CPU runs each thread's work on that thread's own OpenMP team, and once
        two teams exist libgomp stops spinning and sleeps between parallel regions (it sees more
        threads than cores). On 2 cores a SmolLM2 step then takes ~57 ms instead of ~34 ms. So
        the worker's other torch work (question and document embeddings, reranking) runs here,
        on the one thread that already owns a team; each call delays the running requests' next
        token by its own duration.
        """
        if threading.current_thread() is self._thread or not self.alive():
            return fn()
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                return fn()
            self._calls.append((fn, future))
            self._lock.notify_all()
        return future.result()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "slots": self.slots,
                "slots_in_use": sum(owner is not None for owner in self._owner),
                "waiting": len(self._waiting),
                "max_active": self.max_active,
                "oom_events": self.oom_events,
                "graphs": len(self._graphs),
            }

    def warm_up(self) -> None:
        """Capture every decode graph now, on the loop's thread, before a request needs one (CUDA)."""
        if self.cuda_graphs:
            self.call(self._capture_all)

    # ------------------------------------------------------------------ the loop thread

    def _loop(self, ready: Future[None], compile: bool | None) -> None:
        import torch

        try:
            self._setup(compile)
        except BaseException as exc:  # noqa: BLE001 - raised in the constructor
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            with torch.inference_mode():
                while True:
                    with self._lock:
                        idle = (
                            not self._waiting and all(o is None for o in self._owner) and not self._pending
                            and not self._calls
                        )
                        if self._closed:
                            break
                        if idle:
                            self._lock.wait(timeout=0.5)
                            continue
                        calls = list(self._calls)
                        self._calls.clear()
                    _run_calls(calls)
                    self._admit()
                    step = self._launch()
                    if step is not None:
                        self._pending.append(step)
                    # Keep up to _PIPELINE_DEPTH steps queued on the GPU while Python delivers.
                    while self._pending and (step is None or len(self._pending) > _PIPELINE_DEPTH):
                        self._deliver(self._pending.popleft())
        except Exception:
            logger.exception("slot engine loop crashed")
        finally:
            self._fail_all("generation thread stopped")

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            requests = list(self._by_id.values())
            self._by_id.clear()
            self._waiting.clear()
            calls = list(self._calls)
            self._calls.clear()
        for request in requests:
            request.handle._finish("error", reason)
        _run_calls(calls)  # the loop is gone: run them on the callers' behalf

    def _release(self, request: _Request) -> None:
        """Give the request's slot back (caller holds the lock)."""
        slot = request.slot
        if slot is not None and self._owner[slot] is request:
            self._owner[slot] = None
            heapq.heappush(self._free, slot)
        request.slot = None

    def _end(self, request: _Request) -> None:
        with self._lock:
            request.done = True
            self._by_id.pop(request.handle.id, None)
            self._release(request)

    # ---- admission and prefill

    def _admit(self) -> None:
        import torch

        with self._lock:
            running = sum(o is not None for o in self._owner)
            batch: list[_Request] = []
            budget = self.prefill_tokens
            while self._waiting and self._free and running + len(batch) < self.max_active:
                request = self._waiting[0]
                if batch and len(request.prompt) * (len(batch) + 1) > budget:
                    break  # padded to the longest prompt: keep the step within its budget
                self._waiting.popleft()
                request.slot = heapq.heappop(self._free)
                self._owner[request.slot] = request
                batch.append(request)
        if not batch:
            return
        try:
            if self.fault_hook is not None:
                self.fault_hook("prefill")
            first = self._prefill(batch)
        except torch.OutOfMemoryError as exc:
            self._on_oom(batch, exc, "prefill")
            return
        except Exception as exc:
            logger.exception("prefill failed")
            for request in batch:
                self._end(request)
                request.handle._finish("error", f"generation failed: {type(exc).__name__}: {exc}")
            return
        for request, token in zip(batch, first):
            request.pos = len(request.prompt)
            request.launched += 1
            self._take(request, token)

    def _prefill(self, batch: list[_Request]) -> list[int]:
        """Run the prompts, fill their slots' cache, and return each one's first sampled token."""
        import torch
        import torch.nn.functional as F

        n = len(batch)
        lengths = [len(r.prompt) for r in batch]
        width = max(lengths)
        ids = torch.zeros(n, width, dtype=torch.long)
        for row, request in enumerate(batch):
            ids[row, : lengths[row]] = torch.tensor(request.prompt)
        ids = ids.to(self.device)
        positions = self._arange[:width].unsqueeze(0).expand(n, width)
        slot_index = torch.tensor([r.slot for r in batch], device=self.device)
        base = self.model.model
        ops = self._ops
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
        tokens = self._sample(logits, [r.handle.params for r in batch])
        self._tokens.index_copy_(0, slot_index, tokens)
        return [int(t) for t in tokens.tolist()]

    # ---- decode

    def _launch(self) -> _Step | None:
        """Start one decode step for every running slot; returns without waiting for the GPU."""
        import torch

        with self._lock:
            owners = [
                (slot, r) for slot, r in enumerate(self._owner) if r is not None and r.launched < r.max_new
            ]
        if not owners:
            return None
        top = owners[-1][0] + 1
        batch = self._batch_bucket(top)
        context = max(r.pos for _, r in owners) + 1
        if self.cuda_graphs:
            context = min(self.max_context, -(-context // _GRAPH_CONTEXT_STEP) * _GRAPH_CONTEXT_STEP)
        host_positions = self._host_positions[self._flip]
        host_tokens = self._host_tokens[self._flip]
        self._flip = (self._flip + 1) % len(self._host_tokens)
        host_positions.zero_()
        for slot, request in owners:
            host_positions[slot] = request.pos
        try:
            if self.fault_hook is not None:
                self.fault_hook("decode")
            self._positions[:batch].copy_(host_positions[:batch], non_blocking=True)
            if self.cuda_graphs:
                self._graph(batch, context).replay()
            else:
                self._decode(batch, context)
            params = [r.handle.params for _, r in owners]
            if any(p.temperature > 0 for p in params):
                rows = torch.tensor([slot for slot, _ in owners], device=self.device)
                self._tokens.index_copy_(0, rows, self._sample(self._logits.index_select(0, rows), params))
        except torch.OutOfMemoryError as exc:
            while self._pending:
                self._deliver(self._pending.popleft())
            self._on_oom([r for _, r in owners], exc, "decode")
            return None
        for _, request in owners:
            request.pos += 1
            request.launched += 1
        host_tokens[:batch].copy_(self._tokens[:batch], non_blocking=True)
        event = None
        if self.on_cuda:
            event = torch.cuda.Event()
            event.record()
        return _Step(owners, host_tokens, event)

    def _batch_bucket(self, needed: int) -> int:
        if not self.cuda_graphs:
            return needed
        bucket = 1
        while bucket < needed:
            bucket *= 2
        return min(bucket, self.slots)

    def _decode(self, batch: int, context: int) -> None:
        """One token for slots [0, batch): reads and writes only the static buffers (graph-safe)."""
        import torch.nn.functional as F

        tokens = self._tokens[:batch]
        positions = self._positions[:batch]
        slots = self._slot_ids[:batch]
        base = self.model.model
        ops = self._ops
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
        import torch.nn.functional as F

        qkv = self._fused[i][0]
        if qkv is None:
            attn = self._layers[i].self_attn
            q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
        else:
            weight, bias, sizes = qkv
            q, k, v = F.linear(h, weight, bias).split(sizes, dim=-1)
        batch, tokens = h.shape[0], h.shape[1]
        return (
            q.view(batch, tokens, self._n_heads, self._head_dim).transpose(1, 2),
            k.view(batch, tokens, self._n_kv, self._head_dim).transpose(1, 2),
            v.view(batch, tokens, self._n_kv, self._head_dim).transpose(1, 2),
        )

    def _mlp(self, i: int, h: Any) -> Any:
        import torch.nn.functional as F

        gate_up = self._fused[i][1]
        mlp = self._layers[i].mlp
        if gate_up is None:
            return mlp(h)
        weight, _bias, sizes = gate_up
        gate, up = F.linear(h, weight).split(sizes, dim=-1)
        return mlp.down_proj(self._ops.act_mul(mlp.act_fn, gate, up))

    def _graph(self, batch: int, context: int) -> Any:
        """The CUDA graph for this (batch, context) bucket, captured on first use."""
        import torch

        graph = self._graphs.get((batch, context))
        if graph is not None:
            return graph
        saved = self._tokens[:batch].clone()
        stream = torch.cuda.Stream()
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
        self._graphs[(batch, context)] = graph
        return graph

    def _capture_all(self) -> None:
        """Every (batch, context) bucket's graph, so no request waits for a capture later."""
        import torch

        batches = sorted({self._batch_bucket(n) for n in range(1, self.slots + 1)})
        contexts = range(_GRAPH_CONTEXT_STEP, self.max_context + _GRAPH_CONTEXT_STEP, _GRAPH_CONTEXT_STEP)
        for batch in batches:
            for context in contexts:
                try:
                    self._graph(batch, min(context, self.max_context))
                except torch.OutOfMemoryError:
                    logger.warning("no memory to capture the decode graph for batch %s, context %s", batch, context)
                    return

    # ---- sampling and delivery

    def _sample(self, logits: Any, params: list[Any]) -> Any:
        """One token per row: argmax for temperature 0, else temperature and top-p sampling."""
        import torch

        tokens = logits.argmax(dim=-1)
        rows = [i for i, p in enumerate(params) if p.temperature > 0]
        if not rows:
            return tokens
        index = torch.tensor(rows, device=logits.device)
        temps = torch.tensor([params[i].temperature for i in rows], device=logits.device).unsqueeze(1)
        top_p = torch.tensor([params[i].top_p for i in rows], device=logits.device).unsqueeze(1)
        probs = torch.softmax(logits.index_select(0, index) / temps, dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_probs, 1)
        tokens[index] = order.gather(1, choice).squeeze(1)
        return tokens

    def _deliver(self, step: _Step) -> None:
        if step.event is not None:
            step.event.synchronize()
        tokens = step.tokens.tolist()
        for slot, request in step.owners:
            if not request.done:
                self._take(request, int(tokens[slot]))

    def _take(self, request: _Request, token: int) -> None:
        """Hand one new token to the request's handle; end the request if that finished it."""
        request.generated.append(token)
        final = len(request.generated) >= request.max_new
        handle = request.handle
        handle._on_tokens(request.generated, final=final)
        if final or token in self.eos_ids or handle.finished:
            self._end(request)

    # ---- out of memory

    def _on_oom(self, requests: list[_Request], exc: BaseException, where: str) -> None:
        """Shrink the batch and retry: requests go back to the queue with their tokens kept.

        A request that fails alone can't be served at all and ends as an error.
        """
        import torch

        self.oom_events += 1
        if self.on_cuda:
            torch.cuda.empty_cache()
        live = [r for r in requests if not r.done]
        if len(live) <= 1 and (where == "prefill" or self.max_active == 1 or len(live) == 0):
            for request in live:
                self._end(request)
                request.handle._finish(
                    "error",
                    f"out of GPU memory: this request ({len(request.prompt)} prompt tokens) does not fit even alone",
                )
            logger.error("out of memory in %s; failed %d request(s) that can't fit alone", where, len(live))
            return
        with self._lock:
            if where == "decode":
                self.max_active = max(1, min(self.max_active, len(live)) // 2)
                # Preempt the half in the highest slots, so the running batch shrinks to a lower
                # graph bucket (recomputed on re-admission): their cache rows are dropped, the
                # prompt becomes prompt + what was generated, and the handle keeps streaming.
                victims = sorted(live, key=lambda r: r.slot if r.slot is not None else -1)[max(1, len(live) // 2):]
            else:  # prefill: a smaller prefill step, and this batch back to the queue as it was
                self.prefill_tokens = max(1, self.prefill_tokens // 2)
                victims = live
            for request in reversed(victims):
                self._release(request)
                request.prompt = request.original + request.generated
                request.launched = len(request.generated)
                self._waiting.appendleft(request)
        logger.warning(
            "out of memory in %s: batch limit now %d, %d request(s) requeued (%s)", where, self.max_active,
            len(victims), exc,
        )


_Fused = tuple[Any, Any, list[int]]  # (weight, bias or None, output sizes)


def _cache_sizing(model: Any, max_batch: int, max_context: int | None, cache_bytes: int | None) -> tuple[int, int]:
    """(slots, context per slot) for the static cache within its memory budget."""
    import torch

    from .engine import EngineError

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


def _run_calls(calls: list[tuple[Callable[[], Any], Future[Any]]]) -> None:
    """Run queued `SlotBackend.call` functions, handing each result or exception to its caller."""
    for fn, future in calls:
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            future.set_exception(exc)


def _fuse_linears(modules: list[Any], allow_bias: bool) -> _Fused | None:
    """Concatenate the weights of Linear layers that share an input; None if they can't be."""
    import torch

    if not all(type(m) is torch.nn.Linear for m in modules):
        return None  # quantized or adapter-wrapped layers: call them one by one
    biases = [m.bias for m in modules]
    if any(b is not None for b in biases) and (not allow_bias or any(b is None for b in biases)):
        return None
    with torch.no_grad():
        weight = torch.cat([m.weight for m in modules])
        bias = torch.cat(biases) if biases[0] is not None else None  # type: ignore[arg-type]
        sizes = [m.out_features for m in modules]
        for m, part in zip(modules, weight.split(sizes)):
            m.weight = torch.nn.Parameter(part, requires_grad=False)
        if bias is not None:
            for m, part in zip(modules, bias.split(sizes)):
                m.bias = torch.nn.Parameter(part, requires_grad=False)
    return weight, bias, sizes


def _fuse_layer(layer: Any) -> tuple[_Fused | None, _Fused | None]:
    """(q/k/v, gate/up) fused for one decoder layer; None where that pair can't be."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv = _fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj], allow_bias=True)
    gate_up = None
    if all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        gate_up = _fuse_linears([mlp.gate_proj, mlp.up_proj], allow_bias=False)
    return qkv, gate_up


class _Ops:
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
