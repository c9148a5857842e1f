"""The remote OpenAI-compatible server backend: streaming, retries, timeouts, cancel, health.

Framework-free like the engine: `python -m pytest inference/tests/test_remote.py -p no:django -q`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from inference.engine import Delta, SamplingParams
from inference.engine.remote import BackendConfigError, RemoteServer, RemoteServerConfig, Timeouts
from inference.tests.scripted_openai import Script, closed_port_url, scripted_server

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]


def backend(base_url: str, **overrides: Any) -> RemoteServer:
    timeouts = overrides.pop("timeouts", Timeouts(connect_s=2, first_token_s=5, idle_s=5, total_s=20))
    config = RemoteServerConfig(name="remote-a", base_url=base_url, model="scripted-model", api_key="sk-test",
                          timeouts=timeouts, **{"backoff_s": 0.01, **overrides})
    return RemoteServer(config)


def drain(handle: Any) -> list[Delta]:
    return list(handle)


def test_it_streams_text_then_the_finish_reason_and_usage() -> None:
    with scripted_server() as (url, script):
        handle = backend(url).submit_chat(MESSAGES, SamplingParams(max_new_tokens=16))
        deltas = drain(handle)
    assert [d.text for d in deltas] == ["Hello", ", ", "world", "!", ""]
    assert [d.finished for d in deltas] == [False] * 4 + [True]
    assert deltas[-1].finish_reason == "stop" and handle.finish_reason == "stop" and handle.error is None
    assert handle.text == "Hello, world!"
    assert handle.usage == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    assert deltas[-1].token_count == handle.token_count == 4
    assert handle.ttft_s is not None and handle.attempts == 1


def test_it_sends_the_model_sampling_stop_strings_and_key() -> None:
    with scripted_server() as (url, script):
        drain(backend(url).submit_chat(MESSAGES, SamplingParams(max_new_tokens=9, temperature=0.5, top_p=0.8,
                                                                 stop=("END",))))
    body = script.chat_requests[0]
    assert body["model"] == "scripted-model" and body["messages"] == MESSAGES and body["stream"] is True
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["stop"]) == (9, 0.5, 0.8, ["END"])
    assert body["stream_options"] == {"include_usage": True}


def test_it_reports_a_length_finish() -> None:
    with scripted_server(Script(finish_reason="length")) as (url, _):
        handle = backend(url).submit_chat(MESSAGES, SamplingParams())
        assert drain(handle)[-1].finish_reason == "length"


def test_it_retries_before_the_first_token() -> None:
    with scripted_server(Script(fail_first=2)) as (url, script):
        handle = backend(url, retries=2).submit_chat(MESSAGES, SamplingParams())
        drain(handle)
    assert handle.finish_reason == "stop" and handle.text == "Hello, world!"
    assert handle.attempts == 3 and len(script.chat_requests) == 3
    assert "HTTP 503" in handle.attempt_errors[0] and "overloaded" in handle.attempt_errors[0]


def test_it_gives_up_after_its_retries_with_the_reason() -> None:
    with scripted_server(Script(fail_first=10)) as (url, script):
        handle = backend(url, retries=1).submit_chat(MESSAGES, SamplingParams())
        deltas = drain(handle)
    assert deltas[-1].finish_reason == "error" and len(script.chat_requests) == 2
    assert handle.error is not None and "remote-a" in handle.error and "HTTP 503" in handle.error


def test_it_does_not_retry_a_request_the_server_refuses() -> None:
    with scripted_server(Script(fail_first=1, fail_status=400)) as (url, script):
        handle = backend(url, retries=3).submit_chat(MESSAGES, SamplingParams())
        drain(handle)
    assert handle.finish_reason == "error" and "HTTP 400" in (handle.error or "")
    assert len(script.chat_requests) == 1


def test_it_never_retries_once_text_was_streamed() -> None:
    with scripted_server(Script(drop_after=2)) as (url, script):
        handle = backend(url, retries=3).submit_chat(MESSAGES, SamplingParams())
        deltas = drain(handle)
    # The text already shown stays; a second attempt would have repeated it.
    assert [d.text for d in deltas[:-1]] == ["Hello", ", "] and handle.text == "Hello, "
    assert deltas[-1].finish_reason == "error" and "ended before the answer finished" in (handle.error or "")
    assert len(script.chat_requests) == 1


def test_it_gives_up_when_no_first_token_comes_in_time() -> None:
    timeouts = Timeouts(connect_s=2, first_token_s=0.5, idle_s=5, total_s=20)
    with scripted_server(Script(stall_after=0)) as (url, script):
        handle = backend(url, timeouts=timeouts).submit_chat(MESSAGES, SamplingParams())
        started = time.monotonic()
        assert handle.wait_started(timeout=5)
        waited = time.monotonic() - started
        assert handle.finish_reason == "error" and "no first token within 0.5 s" in (handle.error or "")
        assert 0.4 < waited < 2.0
        # Giving up closed the connection, so the server can free the request's slot.
        assert script.client_went_away.wait(3)


def test_it_gives_up_when_the_stream_stalls() -> None:
    timeouts = Timeouts(connect_s=2, first_token_s=5, idle_s=0.5, total_s=20)
    with scripted_server(Script(stall_after=2)) as (url, script):
        handle = backend(url, timeouts=timeouts).submit_chat(MESSAGES, SamplingParams())
        deltas = drain(handle)
        assert handle.text == "Hello, " and deltas[-1].finish_reason == "error"
        assert "stalled" in (handle.error or "")
        assert script.client_went_away.wait(3)


def test_it_bounds_the_whole_answer() -> None:
    timeouts = Timeouts(connect_s=2, first_token_s=5, idle_s=5, total_s=0.6)
    with scripted_server(Script(chunks=["x"] * 50, chunk_delay_s=0.05)) as (url, _):
        handle = backend(url, timeouts=timeouts).submit_chat(MESSAGES, SamplingParams())
        deltas = drain(handle)
    assert deltas[-1].finish_reason == "error" and "no complete answer within 0.6 s" in (handle.error or "")
    assert 0 < len(handle.text) < 50


def test_it_cancels_by_closing_the_stream() -> None:
    with scripted_server(Script(chunks=["tick "] * 100, chunk_delay_s=0.05)) as (url, script):
        handle = backend(url).submit_chat(MESSAGES, SamplingParams())
        deltas: list[Delta] = []
        for delta in handle:
            deltas.append(delta)
            if len(deltas) == 2:
                handle.cancel()
        assert deltas[-1].finish_reason == "cancelled" and handle.finish_reason == "cancelled"
        assert script.client_went_away.wait(3)
        assert handle.text.count("tick") < 10


def test_it_stops_waiting_for_the_first_token_when_asked_to() -> None:
    with scripted_server(Script(first_delay_s=5)) as (url, script):
        handle = backend(url).submit_chat(MESSAGES, SamplingParams())
        asked = time.monotonic() + 0.3
        assert handle.wait_started(timeout=5, should_stop=lambda: time.monotonic() > asked)
        assert handle.finish_reason == "cancelled" and handle.text == ""


def test_it_fails_with_the_reason_when_nothing_listens() -> None:
    handle = backend(closed_port_url(), retries=1).submit_chat(MESSAGES, SamplingParams())
    drain(handle)
    assert handle.finish_reason == "error" and handle.attempts == 2
    assert "cannot connect" in (handle.error or "")


def test_it_checks_health_and_caches_the_answer() -> None:
    with scripted_server() as (url, script):
        remote = backend(url, health_ttl_s=0.3)
        assert remote.health().ok and remote.health().ok
        assert script.models_requests == 1  # the second answer came from the cache
        time.sleep(0.35)
        assert remote.health().ok and script.models_requests == 2


def test_it_marks_unreachable_and_wrong_model_servers_unhealthy() -> None:
    down = backend(closed_port_url()).health()
    assert not down.ok and "cannot connect" in down.reason
    with scripted_server(Script(model="another-model")) as (url, _):
        wrong = backend(url).health()
    assert not wrong.ok and "'scripted-model' is not served" in wrong.reason and "another-model" in wrong.reason
    with scripted_server(Script(models_status=401)) as (url, _):
        refused = backend(url).health()
    assert not refused.ok and "HTTP 401" in refused.reason


def test_it_keeps_a_failure_in_the_health_cache() -> None:
    with scripted_server() as (url, script):
        remote = backend(url, health_ttl_s=60)
        remote.mark_unhealthy("failed before its first token")
        health = remote.health()
        assert not health.ok and health.reason == "failed before its first token" and script.models_requests == 0
        assert remote.health(force=True).ok


def test_it_parses_configuration_and_refuses_mistakes() -> None:
    config = RemoteServerConfig.from_dict({"name": "vllm-a", "base_url": "http://vllm:8000/v1/", "model": "m",
                                     "timeouts": {"first_token_s": 90}, "retries": 0})
    assert config.base_url == "http://vllm:8000/v1" and config.retries == 0
    assert config.timeouts == Timeouts(first_token_s=90)
    mistakes: list[tuple[dict[str, Any], str]] = [
        ({"name": "a", "base_url": "http://x", "model": "m", "timeout": 3}, "unknown keys timeout"),
        ({"name": "a", "base_url": "http://x", "model": "m", "timeouts": {"first_token": 3}}, "unknown timeouts"),
        ({"name": "a", "base_url": "http://x"}, "model is required"),
        ({"name": "a", "base_url": "vllm:8000", "model": "m"}, "must start with http"),
        ({"name": "local", "base_url": "http://x", "model": "m"}, "kept for the local engine"),
        ({"name": "a", "base_url": "http://x", "model": "m", "timeouts": {"idle_s": 0}}, "must be positive"),
        ({"name": "a", "base_url": "http://x", "model": "m", "retries": "many"}, "backend a"),
    ]
    for raw, message in mistakes:
        with pytest.raises(BackendConfigError, match=message):
            RemoteServerConfig.from_dict(raw)


def test_it_imports_without_django_or_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; import inference.engine.backends, inference.engine.remote; "
            "bad = [m for m in ('django', 'torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
