"""Static batching on a tiny random Llama: exact batching, slot release, out-of-memory recovery.

Run without Django: `python -m pytest inference/tests/test_static_batching.py -p no:django -q`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, cast

import pytest

from inference.engine import Engine, SamplingParams
from inference.engine.batching.static.scheduler import StaticBatcher

PROMPTS = [
    "Hi",
    "The quick brown fox jumps over the lazy dog and then",
    "Once upon a time",
    "In the beginning there was a small village by the sea where",
    "Tell me about",
    "A B C D E F G",
]
NEW_TOKENS = 20


@pytest.fixture(scope="module")
def greedy(tiny_model: Any, tokenizer: Any) -> dict[str, tuple[list[int], list[int]]]:
    """Each prompt alone through plain greedy `generate`: (prompt ids, generated ids)."""
    import torch

    refs = {}
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = tiny_model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )
        refs[prompt] = (ids[0].tolist(), out[0, ids.shape[1] :].tolist())
    return refs


def _static(engine: Engine) -> StaticBatcher:
    """The engine's batcher, as the static one these tests start."""
    return cast(StaticBatcher, engine._batcher)


@pytest.fixture
def engine(tiny_model: Any, tokenizer: Any, greedy: Any) -> Iterator[Engine]:
    eng = Engine.from_model(tiny_model, tokenizer, batching="static", max_batch=4, max_context=256)
    assert eng.batching == "static"
    yield eng
    eng.close()


def _run_all(engine: Engine, greedy: Any, prompts: list[str]) -> dict[str, list[int]]:
    """Submit every prompt from its own thread at once and collect the generated ids."""
    out: dict[str, list[int]] = {}
    barrier = threading.Barrier(len(prompts))

    def run(prompt: str) -> None:
        barrier.wait(timeout=10)
        handle = engine.submit(greedy[prompt][0], SamplingParams(max_new_tokens=NEW_TOKENS))
        assert handle.wait(120)
        assert handle.finish_reason in ("length", "stop"), handle.error
        out[prompt] = handle.token_ids

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return out


def test_it_matches_unbatched_greedy_output_for_every_request(engine: Engine, greedy: Any) -> None:
    # Six requests of different lengths on four slots: some wait, and join a running batch later.
    out = _run_all(engine, greedy, PROMPTS)
    assert out == {p: greedy[p][1] for p in PROMPTS}
    assert engine.stats()["slots_in_use"] == 0


def test_it_keeps_greedy_requests_exact_beside_a_sampled_one(engine: Engine, greedy: Any) -> None:
    sampled = engine.submit(greedy[PROMPTS[0]][0], SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.0))
    out = _run_all(engine, greedy, PROMPTS[1:3])
    assert sampled.wait(60) and sampled.finish_reason in ("length", "stop")
    assert out == {p: greedy[p][1] for p in PROMPTS[1:3]}


def test_it_frees_the_slot_the_moment_a_request_is_cancelled(engine: Engine, greedy: Any) -> None:
    handle = engine.submit(greedy[PROMPTS[1]][0], SamplingParams(max_new_tokens=200))
    stream = iter(handle)
    assert not next(stream).finished
    assert engine.stats()["slots_in_use"] == 1
    handle.cancel()
    assert engine.stats()["slots_in_use"] == 0  # at once, not after the next step
    assert list(stream)[-1].finish_reason == "cancelled"
    # The freed slot serves the next request correctly (its old cache rows are overwritten).
    prompt_ids, expected = greedy[PROMPTS[3]]
    follow = engine.submit(prompt_ids, SamplingParams(max_new_tokens=NEW_TOKENS))
    assert follow.wait(60) and follow.token_ids == expected


def test_it_shrinks_the_batch_and_retries_after_an_out_of_memory_error(engine: Engine, greedy: Any) -> None:
    import torch

    slots = _static(engine)
    injected: list[str] = []

    def oom_once_when_full(where: str) -> None:
        if where == "decode" and not injected and slots.stats()["slots_in_use"] == 4:
            injected.append(where)
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")

    slots.fault_hook = oom_once_when_full
    out = _run_all(engine, greedy, PROMPTS[:4])
    assert injected == ["decode"]
    stats = engine.stats()
    assert stats["oom_events"] == 1 and stats["max_active"] == 2
    # The preempted half was recomputed from prompt + generated tokens: nothing lost, nothing changed.
    assert out == {p: greedy[p][1] for p in PROMPTS[:4]}


def test_it_fails_only_the_request_that_cannot_fit_and_keeps_serving(engine: Engine, greedy: Any) -> None:
    import torch

    too_big = greedy[PROMPTS[3]][0]

    def oom_for_the_long_prompt(where: str) -> None:
        waiting = [r for r in _static(engine)._owner if r is not None]
        if where == "prefill" and any(r.original == too_big for r in waiting):
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")

    _static(engine).fault_hook = oom_for_the_long_prompt
    handle = engine.submit(too_big, SamplingParams(max_new_tokens=NEW_TOKENS))
    assert handle.wait(60)
    assert handle.finish_reason == "error"
    assert "out of GPU memory" in (handle.error or "") and "does not fit even alone" in (handle.error or "")
    prompt_ids, expected = greedy[PROMPTS[2]]
    follow = engine.submit(prompt_ids, SamplingParams(max_new_tokens=NEW_TOKENS))
    assert follow.wait(60) and follow.token_ids == expected
    assert _static(engine).alive()


def test_it_refuses_a_prompt_longer_than_its_context(engine: Engine) -> None:
    handle = engine.submit([1] * 300, SamplingParams(max_new_tokens=4))
    assert handle.wait(10) and handle.finish_reason == "error"
    assert "300 tokens" in (handle.error or "") and "256" in (handle.error or "")


def test_it_ends_by_length_at_the_end_of_its_context(engine: Engine, greedy: Any) -> None:
    handle = engine.submit([1] * 250, SamplingParams(max_new_tokens=50))
    assert handle.wait(60) and handle.finish_reason in ("length", "stop")
    assert len(handle.token_ids) <= 6


def test_it_runs_other_torch_work_on_its_own_thread_between_steps(engine: Engine, greedy: Any) -> None:
    # Embeddings and reranking go through Engine.call: on the CPU a second thread computing with
    # torch would give OpenMP a second team and slow every decode step (StaticBatcher.call).
    assert engine.call(threading.current_thread) is _static(engine)._thread
    handle = engine.submit(greedy[PROMPTS[1]][0], SamplingParams(max_new_tokens=NEW_TOKENS))
    assert engine.call(lambda: 6 * 7) == 42  # served while a request runs
    with pytest.raises(ZeroDivisionError):
        engine.call(lambda: 1 / 0)
    assert handle.wait(60) and handle.token_ids == greedy[PROMPTS[1]][1]


def test_it_starts_with_fewer_slots_when_the_cache_does_not_fit(
    tiny_model: Any, tokenizer: Any, greedy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    setup = StaticBatcher._setup

    def oom_above_two_slots(self: StaticBatcher, compile: bool | None) -> None:
        if self.slots > 2:  # an injected out-of-memory error, as a crowded GPU would raise
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")
        setup(self, compile)

    monkeypatch.setattr(StaticBatcher, "_setup", oom_above_two_slots)
    eng = Engine.from_model(tiny_model, tokenizer, batching="static", max_batch=8, max_context=256)
    try:
        assert eng.batching == "static" and eng.stats()["slots"] == 2
        out = _run_all(eng, greedy, PROMPTS[:3])  # three requests on two slots: one waits
        assert out == {p: greedy[p][1] for p in PROMPTS[:3]}
    finally:
        eng.close()


def test_it_gives_the_same_tokens_with_its_small_kernels_compiled(
    tiny_model: Any, tokenizer: Any, greedy: Any
) -> None:
    # The GPU default: norms, rotary with the cache writes, and the activation through torch.compile.
    eng = Engine.from_model(tiny_model, tokenizer, batching="static", max_batch=4, max_context=256, compile=True)
    try:
        assert _static(eng).runner.ops._rope_write is not _static(eng).runner.ops._rope_write_eager
        out = _run_all(eng, greedy, PROMPTS[:3])
        assert out == {p: greedy[p][1] for p in PROMPTS[:3]}
        assert _static(eng).runner.ops._rope_write is not _static(eng).runner.ops._rope_write_eager  # no fallback was needed
    finally:
        eng.close()


def test_it_frees_the_slot_cache_when_closed_though_the_engine_is_still_referenced(
    tiny_model: Any, tokenizer: Any
) -> None:
    eng = Engine.from_model(tiny_model, tokenizer, batching="static", max_batch=2, max_context=64)
    runner = _static(eng).runner
    assert len(runner.k_cache) == len(runner.v_cache) == tiny_model.config.num_hidden_layers
    eng.close()
    # The caller still holds `eng`: the cache must be gone all the same (the next engine needs it).
    assert runner.k_cache == [] and runner.v_cache == [] and runner.graphs == {} and runner._fused == []
