"""Engine tests on a tiny random Llama (every batching mode) plus one smoke test on real SmolLM2.

Run without Django: `python -m pytest inference/tests -p no:django -q`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inference.engine import (
    Delta,
    Engine,
    ModelNotFoundError,
    RequestHandle,
    SamplingParams,
    resolve_model_path,
)

PROMPTS = ["Hello there, how are", "The quick brown fox", "Once upon a time in a land"]
NEW_TOKENS = 24


@pytest.fixture(scope="session")
def references(tiny_model: Any, tokenizer: Any) -> dict[str, tuple[list[int], str]]:
    """Greedy `model.generate` output per prompt: what every engine path must reproduce."""
    import torch

    refs: dict[str, tuple[list[int], str]] = {}
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = tiny_model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        refs[prompt] = (ids[0].tolist(), tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return refs


@pytest.fixture(scope="module", params=["static", "continuous", "simple"])
def engine(request: pytest.FixtureRequest, tiny_model: Any, tokenizer: Any, references: Any) -> Iterator[Engine]:
    # `references` first: the greedy reference runs before any engine thread touches the model.
    eng = Engine.from_model(tiny_model, tokenizer, batching=request.param, max_batch=4)
    assert eng.batching == request.param
    yield eng
    eng.close()


def _collect(handle: Any) -> list[Delta]:
    deltas = list(handle)
    assert deltas and deltas[-1].finished
    assert all(not d.finished for d in deltas[:-1])
    return deltas


def test_it_streams_the_same_text_as_greedy_generate(engine: Engine, references: Any) -> None:
    prompt_ids, expected = references[PROMPTS[0]]
    handle = engine.submit(prompt_ids, SamplingParams(max_new_tokens=NEW_TOKENS))
    deltas = _collect(handle)
    assert "".join(d.text for d in deltas) == expected
    assert handle.text == expected
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].token_count == NEW_TOKENS
    assert handle.ttft_s is not None and handle.ttft_s > 0
    assert engine.generate(prompt_ids, SamplingParams(max_new_tokens=NEW_TOKENS)) == expected


def test_it_cancels_within_one_decode_step(engine: Engine, references: Any) -> None:
    prompt_ids, _ = references[PROMPTS[1]]
    handle = engine.submit(prompt_ids, SamplingParams(max_new_tokens=400))
    stream = iter(handle)
    first = next(stream)
    assert not first.finished
    handle.cancel()
    rest = list(stream)
    assert rest[-1].finished and rest[-1].finish_reason == "cancelled"
    # A later request completing proves the batcher moved past the cancelled one, so any late
    # output for it has been counted by now.
    other_ids, other_expected = references[PROMPTS[2]]
    assert engine.generate(other_ids, SamplingParams(max_new_tokens=NEW_TOKENS)) == other_expected
    assert handle.tokens_after_cancel <= 1
    assert len(handle.token_ids) < 400


def test_it_serves_concurrent_requests_from_threads(engine: Engine, references: Any) -> None:
    results: dict[str, str] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(PROMPTS))

    def run(prompt: str) -> None:
        try:
            barrier.wait(timeout=10)
            handle = engine.submit(references[prompt][0], SamplingParams(max_new_tokens=NEW_TOKENS))
            results[prompt] = "".join(d.text for d in _collect(handle))
        except BaseException as exc:  # noqa: BLE001 - surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in PROMPTS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert results == {p: references[p][1] for p in PROMPTS}


def test_it_trims_stop_strings(engine: Engine, references: Any) -> None:
    prompt_ids, expected = references[PROMPTS[0]]
    # A stop string from the middle of the known answer: output must end right before it.
    stop = expected[len(expected) // 2 : len(expected) // 2 + 4]
    handle = engine.submit(prompt_ids, SamplingParams(max_new_tokens=NEW_TOKENS, stop=("<never>", stop)))
    deltas = _collect(handle)
    assert deltas[-1].finish_reason == "stop"
    assert "".join(d.text for d in deltas) == expected[: expected.index(stop)]
    assert handle.text == expected[: expected.index(stop)]


def test_it_samples_with_temperature(engine: Engine, references: Any) -> None:
    prompt_ids, _ = references[PROMPTS[0]]
    handle = engine.submit(prompt_ids, SamplingParams(max_new_tokens=8, temperature=0.9, top_p=0.95))
    deltas = _collect(handle)
    assert deltas[-1].finish_reason in ("length", "stop")
    assert len(handle.token_ids) >= 1


def test_it_rejects_token_ids_outside_the_vocabulary(engine: Engine, tokenizer: Any) -> None:
    handle = engine.submit([len(tokenizer) + 10], SamplingParams(max_new_tokens=4))
    deltas = _collect(handle)
    assert deltas[-1].finish_reason == "error"
    assert "vocabulary" in (deltas[-1].error or "")


def test_it_ends_a_failed_request_with_an_error_and_keeps_serving(
    engine: Engine, tiny_model: Any, references: Any
) -> None:
    def explode(module: Any, args: Any) -> None:
        raise RuntimeError("boom in forward")

    hook = tiny_model.model.embed_tokens.register_forward_pre_hook(explode)
    try:
        handle = engine.submit(references[PROMPTS[0]][0], SamplingParams(max_new_tokens=4))
        deltas = _collect(handle)
    finally:
        hook.remove()
    assert deltas[-1].finish_reason == "error"
    assert "boom" in (deltas[-1].error or "")
    # The continuous path restarts its (dead) batching loop; the simple path never stopped.
    prompt_ids, expected = references[PROMPTS[2]]
    assert engine.generate(prompt_ids, SamplingParams(max_new_tokens=NEW_TOKENS)) == expected


def test_it_does_not_hang_consumers_when_closed(tiny_model: Any, tokenizer: Any, references: Any) -> None:
    eng = Engine.from_model(tiny_model, tokenizer, batching="auto", max_batch=2)
    handle = eng.submit(references[PROMPTS[0]][0], SamplingParams(max_new_tokens=1000))
    eng.close()
    deltas = _collect(handle)
    assert deltas[-1].finish_reason in ("error", "length", "stop")


class _DecodeOnly:
    """Just enough of an Engine for a RequestHandle: decoding, no batcher."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def _drop_from_batch(self, handle: Any) -> None:
        pass

    def _alive(self) -> bool:
        return True


def test_it_never_splits_multibyte_characters(tokenizer: Any) -> None:
    text = "Grüße aus 東京 🙂 — naïve café"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    # Byte-level BPE splits some of these characters across tokens: prefixes decode to U+FFFD.
    assert any(tokenizer.decode(ids[:n]).endswith("\ufffd") for n in range(1, len(ids)))
    handle = RequestHandle("t", _DecodeOnly(tokenizer), SamplingParams(max_new_tokens=len(ids)), set())
    for n in range(1, len(ids) + 1):
        handle._on_tokens(ids[:n], final=n == len(ids))
    deltas = _collect(handle)
    assert all("\ufffd" not in d.text for d in deltas)
    assert "".join(d.text for d in deltas) == text
    assert deltas[-1].finish_reason == "length"


def test_it_holds_back_a_partial_stop_string(tokenizer: Any) -> None:
    ids = tokenizer("Paris is nice. END of answer", add_special_tokens=False).input_ids
    handle = RequestHandle("t", _DecodeOnly(tokenizer), SamplingParams(stop=("END of",)), set())
    for n in range(1, len(ids) + 1):
        handle._on_tokens(ids[:n], final=False)
    deltas = _collect(handle)
    assert "".join(d.text for d in deltas) == "Paris is nice. "
    assert deltas[-1].finish_reason == "stop"


def test_it_raises_model_not_found_for_a_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError) as excinfo:
        resolve_model_path(str(missing), tmp_path)
    assert str(missing) in str(excinfo.value)
    with pytest.raises(ModelNotFoundError):
        Engine.load(missing)


def test_it_prefers_an_explicit_model_path(tmp_path: Path, smollm_dir: Path) -> None:
    assert resolve_model_path(str(smollm_dir), tmp_path / "unused") == smollm_dir


def test_it_answers_with_the_default_smollm2(smollm_dir: Path, models_dir: Path) -> None:
    assert resolve_model_path(None, models_dir) == smollm_dir
    eng = Engine.load(smollm_dir, max_batch=2)
    try:
        prompt = eng.chat_prompt([{"role": "user", "content": "What is the capital of France?"}])
        answer = eng.generate(prompt, SamplingParams(max_new_tokens=30))
    finally:
        eng.close()
    assert "Paris" in answer
