"""Routing a turn: sensitive data stays local, the fastest healthy remote wins, failures fail over.

Full turns run through `chat.turns.message_generate` on the real PostgreSQL and Redis, with
the local engine on a tiny random model; the remotes are scripted OpenAI-compatible servers on
real sockets, or a closed port.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from audit.services import SYSTEM, actor_for
from chat import services, streams, turns
from chat.models import Conversation, ConversationKnowledgeBase, Message
from console import services as tenant_services
from deepseek_web.redis_client import fast_client
from inference import routing
from inference.engine import SamplingParams
from inference.tests.scripted_openai import Script, closed_port_url, scripted_server
from knowledge.services import knowledge_bases as knowledge_services
from tenants.rls import tenant_context

MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(autouse=True)
def _forget_latencies() -> Iterator[None]:
    """Each test starts with no recorded latency (they live in the test Redis database)."""
    def clear() -> None:
        client = fast_client()
        keys = list(client.scan_iter(match=routing.LATENCY_KEY.format(name="*")))
        if keys:
            client.delete(*keys)

    clear()
    yield
    clear()


@pytest.fixture
def local_model(use_model: Any, tiny_model_dir: str) -> str:
    use_model(tiny_model_dir, CHAT_MAX_NEW_TOKENS=8)
    return routing.local_name()


@pytest.fixture
def remotes(settings: Any) -> Iterator[Any]:
    """configure(name=Script | None, ...): one scripted server per name (None: a closed port)."""
    with ExitStack() as stack:
        def configure(**backends: Script | None) -> dict[str, Script]:
            scripts: dict[str, Script] = {}
            entries = []
            for name, script in backends.items():
                if script is None:
                    url = closed_port_url()
                else:
                    url, scripts[name] = stack.enter_context(scripted_server(script))
                entries.append({"name": name, "base_url": url, "model": "scripted-model", "retries": 0,
                                "timeouts": {"connect_s": 2, "first_token_s": 10, "idle_s": 10, "total_s": 30}})
            settings.INFERENCE_BACKENDS = entries
            return scripts

        yield configure


@pytest.fixture
def reply(world: Any) -> Message:
    return ask(world)


def ask(world: Any, conversation: Conversation | None = None) -> Message:
    with tenant_context(world.tenant_a.pk):
        conversation = conversation or Conversation.objects.create(tenant=world.tenant_a, user=world.alice)
        _, reply = services.message_submit(conversation=conversation, text="Say hello.",
                                           actor=actor_for(user_id=world.alice.pk, role="employee"))
    return reply


def run_turn(reply: Message) -> Message:
    turns.message_generate(tenant_id=reply.tenant_id, message_id=reply.pk)
    with tenant_context(reply.tenant_id):
        reply.refresh_from_db()
    return reply


def candidates(reply: Message) -> list[tuple[str, str]]:
    return [(c["name"], c["outcome"]) for c in reply.timings["routing"]["candidates"]]


def test_it_keeps_a_sensitive_tenants_turn_on_the_local_model_even_when_a_remote_is_faster(
    world: Any, reply: Message, remotes: Any, local_model: str
) -> None:
    scripts = remotes(fast=Script())
    routing.latency_record(name="fast", ttft_s=0.001)
    with tenant_context(world.tenant_a.pk):
        tenant_services.tenant_set_sensitive(tenant=world.tenant_a, sensitive=True, actor=SYSTEM)
    run_turn(reply)
    assert reply.status == Message.Status.DONE and reply.served_by == local_model
    assert candidates(reply) == [("fast", "skipped"), (local_model, "served")]
    assert reply.timings["routing"]["candidates"][0]["reason"] == "sensitive: the tenant is marked sensitive"
    assert scripts["fast"].chat_requests == []  # nothing left the installation


def test_it_keeps_a_turn_that_uses_a_sensitive_knowledge_base_local(
    world: Any, reply: Message, remotes: Any, local_model: str
) -> None:
    scripts = remotes(fast=Script())
    routing.latency_record(name="fast", ttft_s=0.001)
    with tenant_context(world.tenant_a.pk):
        kb = knowledge_services.knowledge_base_create(tenant=world.tenant_a, name="Payroll", sensitive=True,
                                                      actor=SYSTEM)
        ConversationKnowledgeBase.objects.create(tenant=world.tenant_a, conversation_id=reply.conversation_id,
                                                 knowledge_base=kb)
    run_turn(reply)
    assert reply.served_by == local_model and scripts["fast"].chat_requests == []
    assert reply.timings["routing"]["sensitive"] == f"knowledge base {kb.pk} is marked sensitive"


def test_it_keeps_a_conversation_local_once_an_answer_cited_a_sensitive_knowledge_base(
    world: Any, reply: Message, remotes: Any, local_model: str
) -> None:
    """The knowledge base was unchosen since, but its text is still in the history sent along."""
    scripts = remotes(fast=Script())
    with tenant_context(world.tenant_a.pk):
        kb = knowledge_services.knowledge_base_create(tenant=world.tenant_a, name="Payroll", sensitive=True,
                                                      actor=SYSTEM)
        Message.objects.filter(pk=reply.pk).update(status=Message.Status.DONE, content="Salaries are [1].",
                                                   citations=[{"n": 1, "knowledge_base_id": kb.pk}])
    follow_up = ask(world, reply.conversation)
    run_turn(follow_up)
    assert follow_up.served_by == local_model and scripts["fast"].chat_requests == []


def test_it_sends_other_turns_to_the_remote_with_the_lowest_recent_latency(
    world: Any, reply: Message, remotes: Any, local_model: str
) -> None:
    scripts = remotes(slow=Script(chunks=["slow"]), quick=Script(chunks=["quick"]))
    routing.latency_record(name="slow", ttft_s=0.5)
    routing.latency_record(name="quick", ttft_s=0.05)
    run_turn(reply)
    assert reply.status == Message.Status.DONE and reply.served_by == "quick" and reply.content == "quick"
    assert candidates(reply) == [("quick", "served")]
    assert reply.timings["prompt_tokens"] == 7 and reply.token_count == 4  # as the server reported them
    assert len(scripts["quick"].chat_requests) == 1 and scripts["slow"].chat_requests == []
    # The served turn's time to first token joined the average.
    assert routing.latencies(["quick"])["quick"] != pytest.approx(0.05)

    routing.latency_record(name="quick", ttft_s=50.0)  # it got slow: now the other one wins
    route = routing.chat_route(messages=MESSAGES, params=SamplingParams())
    assert route.backend == "slow" and route.handle.wait(5) and route.handle.text == "slow"


def test_it_tries_an_unmeasured_backend_first_so_it_gets_measured(remotes: Any, local_model: str) -> None:
    remotes(measured=Script(chunks=["measured"]), new=Script(chunks=["new"]))
    routing.latency_record(name="measured", ttft_s=0.01)
    route = routing.chat_route(messages=MESSAGES, params=SamplingParams())
    assert route.backend == "new" and routing.latencies(["new"])["new"] is not None


def test_it_fails_over_when_the_fastest_backend_is_down(remotes: Any, local_model: str) -> None:
    remotes(down=None, up=Script())
    routing.latency_record(name="down", ttft_s=0.001)
    routing.latency_record(name="up", ttft_s=1.0)
    route = routing.chat_route(messages=MESSAGES, params=SamplingParams())
    assert route.backend == "up" and route.handle.wait(5) and route.handle.text == "Hello, world!"
    skipped = route.timings()["candidates"][0]
    assert skipped["name"] == "down" and skipped["outcome"] == "skipped"
    assert skipped["reason"].startswith("unhealthy: cannot connect")


def test_it_fails_over_when_a_backend_errors_before_its_first_token_and_then_skips_it(
    remotes: Any, local_model: str
) -> None:
    scripts = remotes(broken=Script(fail_first=100, fail_status=500), good=Script())
    routing.latency_record(name="broken", ttft_s=0.001)
    routing.latency_record(name="good", ttft_s=1.0)
    first = routing.chat_route(messages=MESSAGES, params=SamplingParams())
    assert first.backend == "good"
    failed = first.timings()["candidates"][0]
    assert (failed["name"], failed["outcome"]) == ("broken", "failed") and "HTTP 500" in failed["reason"]
    # The failure marked it unhealthy: the next turn skips it without sending it anything.
    second = routing.chat_route(messages=MESSAGES, params=SamplingParams())
    assert second.backend == "good" and second.timings()["candidates"][0]["outcome"] == "skipped"
    assert len(scripts["broken"].chat_requests) == 1


def test_it_falls_back_to_the_local_model_when_every_remote_fails(
    reply: Message, remotes: Any, local_model: str
) -> None:
    remotes(down=None, broken=Script(fail_first=100))
    run_turn(reply)
    assert reply.status == Message.Status.DONE and reply.served_by == local_model and reply.content
    assert sorted(candidates(reply)) == sorted([("down", "skipped"), ("broken", "failed"), (local_model, "served")])
    assert reply.timings["routing"]["sensitive"] is None


def test_it_stops_waiting_for_a_remote_when_the_user_presses_stop(
    reply: Message, remotes: Any, local_model: str
) -> None:
    remotes(slow=Script(first_delay_s=10))
    stop = threading.Timer(0.5, streams.cancel_request, args=[reply])
    stop.start()
    run_turn(reply)
    # Cancelled while waiting: had it waited for the first token (10 s away), it would hold text.
    assert reply.status == Message.Status.CANCELLED and reply.served_by == "slow" and reply.content == ""


def test_it_serves_locally_without_remote_backends(reply: Message, settings: Any, local_model: str) -> None:
    settings.INFERENCE_BACKENDS = []
    run_turn(reply)
    assert reply.served_by == local_model and candidates(reply) == [(local_model, "served")]
    assert reply.timings["prompt_tokens"] > 0


def test_it_shares_an_average_latency_through_redis(settings: Any) -> None:
    settings.INFERENCE_LATENCY_WEIGHT = 0.25
    assert routing.latencies(["a", "b"]) == {"a": None, "b": None}
    assert routing.latency_record(name="a", ttft_s=1.0) == pytest.approx(1.0)
    assert routing.latency_record(name="a", ttft_s=0.0) == pytest.approx(0.75)
    assert routing.latencies(["a", "b"]) == {"a": pytest.approx(0.75), "b": None}
    assert 0 < fast_client().ttl(routing.LATENCY_KEY.format(name="a")) <= settings.INFERENCE_LATENCY_TTL_S


def test_it_refuses_a_malformed_backend_list(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImproperlyConfigured, match="must be a JSON list"):
        routing.backend_configs({"name": "a"})
    with pytest.raises(ImproperlyConfigured, match="names must be unique"):
        routing.backend_configs([{"name": "a", "base_url": "http://x", "model": "m"}] * 2)
    with pytest.raises(ImproperlyConfigured, match="model is required"):
        routing.backend_configs([{"name": "a", "base_url": "http://x"}])
    monkeypatch.setenv("VLLM_KEY", "sk-from-env")
    [config] = routing.backend_configs([{"name": "a", "base_url": "http://x", "model": "m", "api_key_env": "VLLM_KEY"}])
    assert config.api_key == "sk-from-env"


def test_it_reports_a_malformed_backend_list_as_a_system_check_error(settings: Any) -> None:
    from inference.apps import check_backends

    settings.INFERENCE_BACKENDS = [{"name": "a", "base_url": "http://x", "model": "m", "timeouts": {"idle": 1}}]
    [error] = check_backends()
    assert error.id == "inference.E001" and "unknown timeouts idle" in error.msg
    settings.INFERENCE_BACKENDS = []
    assert check_backends() == []


def test_it_ranks_the_local_engine_by_its_latency_too(reply: Message, remotes: Any, local_model: str) -> None:
    scripts = remotes(remote=Script(chunks=["remote"]))
    routing.latency_record(name="remote", ttft_s=0.5)
    routing.latency_record(name=local_model, ttft_s=0.05)
    run_turn(reply)
    assert reply.served_by == local_model and candidates(reply) == [(local_model, "served")]
    assert scripts["remote"].chat_requests == []
    # The local turn's own time to first token joined the local average.
    assert routing.latencies([local_model])[local_model] != pytest.approx(0.05)

    routing.latency_record(name=local_model, ttft_s=50.0)  # the local engine got slow: the remote wins
    route = routing.chat_route(messages=MESSAGES, params=SamplingParams())
    assert route.backend == "remote" and route.handle.wait(5) and route.handle.text == "remote"
