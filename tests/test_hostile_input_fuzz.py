"""Hostile input, generated: the OpenAI-compatible `/v1` API and the chat WebSocket, on the live server.

Issue 12, finding 11 and what to build 9. Hypothesis sends random bytes, random JSON (unpaired
surrogates, NUL, deep nesting, numbers out of range, wrong types), near-valid requests and frames,
unknown paths and wrong methods. Every answer must be a clean refusal in the endpoint's own format:
for `/v1`, a 4xx with OpenAI's error object; for the WebSocket, an error frame, with the socket
still open and answering. Never a 5xx, never an HTML page, never a dropped socket.

Tenant A's daily message quota is already used up, so a request that is valid all the way down is
refused with 429 at the last step instead of queueing a turn that no worker would answer.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from chat.models import Conversation, Message
from tenants.rls import tenant_context

pytestmark = pytest.mark.django_db(transaction=True)

FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))

# Every code point, unpaired surrogates and NUL included (Hypothesis leaves surrogates out by default).
ANY_CHAR = st.characters(codec=None, exclude_categories=())
TEXT = st.text(ANY_CHAR, max_size=30)
NUMBER = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True))
SCALAR = st.one_of(st.none(), st.booleans(), NUMBER, TEXT)
JSON = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)


def _encode(value: Any, how: str) -> bytes:
    """JSON as a client might send it: escaped to ASCII (surrogates as \\udXXX), or raw UTF-8 that
    lets unpaired surrogates through as invalid bytes. NaN and Infinity are what Python writes."""
    if how == "ascii":
        return json.dumps(value).encode()
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _escaped(text: str) -> str:
    """A path segment as its raw bytes, percent-escaped: an unpaired surrogate becomes invalid UTF-8."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _nested(depth: int, opener: str) -> bytes:
    closer = {"[": "]", "{\"a\":": "}"}[opener]
    return (opener * depth + "1" + closer * depth).encode()


MESSAGE = st.one_of(JSON, st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["user", "system", "developer",
                                                                                    "assistant", "tool"]), JSON),
                                                 "content": st.one_of(TEXT, JSON)}))
# Requests that get past the first checks, so the later ones are fuzzed too.
NEAR_VALID = st.fixed_dictionaries(
    {"model": st.one_of(st.sampled_from(["deepseek-web", "deepseek-web:kb:1", "deepseek-web:kb:99999999999999999999"]),
                        JSON)},
    optional={"messages": st.one_of(st.lists(MESSAGE, min_size=1, max_size=3), JSON),
              "stream": st.one_of(st.booleans(), JSON), "stream_options": JSON, "n": JSON,
              "max_tokens": JSON, "max_completion_tokens": JSON, "temperature": NUMBER, "top_p": NUMBER,
              "stop": st.one_of(st.lists(TEXT, max_size=5), JSON)},
)
BODIES = st.one_of(
    st.binary(max_size=200),
    st.builds(_encode, st.one_of(JSON, NEAR_VALID), st.sampled_from(["ascii", "utf8"])),
    st.builds(_nested, st.integers(min_value=500, max_value=50_000), st.sampled_from(["[", "{\"a\":"])),
)


@pytest.fixture
def quota_used(world) -> Conversation:
    """Tenant A allows one message a day per user, and Alice has sent hers."""
    world.tenant_a.quota_messages_per_user_day = 1
    world.tenant_a.save()
    with tenant_context(world.tenant_a.pk):
        conversation = Conversation.objects.create(tenant=world.tenant_a, user=world.alice, title="fuzz")
        Message.objects.create(tenant=world.tenant_a, conversation=conversation, role=Message.Role.USER,
                               content="the day's one question", created_at=timezone.now())
    return conversation


def _assert_openai_refusal(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    assert response.headers["content-type"] == "application/json", response.text[:500]
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]


def test_it_refuses_every_generated_v1_request_in_openai_format(asgi_server, world, quota_used, api_key_for) -> None:
    key = api_key_for(world.tenant_a, world.alice)
    with httpx.Client(base_url=f"{asgi_server}/v1", headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:

        @FUZZ
        @given(body=BODIES, content_type=st.sampled_from(["application/json", "text/plain", "multipart/form-data"]))
        # What the fuzzing found: a role that is a list or an object was a 500 (unhashable in a dict lookup).
        @example(body=b'{"model": "deepseek-web", "messages": [{"role": [], "content": "hi"}]}',
                 content_type="application/json")
        @example(body=b'{"model": "deepseek-web", "messages": [{"role": {}, "content": "hi"}]}',
                 content_type="application/json")
        def completions(body: bytes, content_type: str) -> None:
            _assert_openai_refusal(client.post("/chat/completions", content=body,
                                               headers={"Content-Type": content_type}))

        @settings(FUZZ, max_examples=60)
        @given(method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
               path=st.one_of(st.sampled_from(["/models", "/chat/completions", "/completions", "/models/",
                                               "/embeddings", ""]),
                              st.builds(lambda text: "/models/" + _escaped(text), TEXT),
                              st.builds(lambda text: "/" + _escaped(text), TEXT)),
               authorization=st.one_of(st.just(f"Bearer {key}"), st.text(max_size=40)
                                       .filter(lambda s: s.isprintable() and s.isascii() and s == s.strip())))
        def elsewhere(method: str, path: str, authorization: str) -> None:
            response = client.request(method, path, headers={"Authorization": authorization})
            if response.status_code == 200:  # a real listing, asked for correctly
                assert method == "GET" and response.json()["object"] in ("list", "model")
                return
            _assert_openai_refusal(response)

        completions()
        elsewhere()


def _socket(asgi_server: str, user: Any, conversation: Conversation, stack: ExitStack) -> ClientConnection:
    client = Client()
    client.force_login(user)
    ws_url = asgi_server.replace("http://", "ws://") + f"/ws/chat/{conversation.pk}/"
    return stack.enter_context(connect(ws_url, origin=Origin(asgi_server),
                                       additional_headers={"Cookie": f"sessionid={client.cookies['sessionid'].value}"},
                                       max_size=None, open_timeout=30))


FRAME_TYPES = st.sampled_from(["submit", "resume", "stop", "chunk", "", "SUBMIT"])
NEAR_VALID_FRAMES = st.fixed_dictionaries(
    {"type": st.one_of(FRAME_TYPES, JSON)},
    optional={"text": st.one_of(TEXT, JSON), "message_id": st.one_of(st.integers(min_value=-(2**70), max_value=2**70),
                                                                     JSON),
              "last_seq": st.one_of(st.integers(min_value=-(2**70), max_value=2**70), JSON)},
)
FRAMES = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda data: _encode(data, "ascii").decode(), st.one_of(JSON, NEAR_VALID_FRAMES)),
    st.builds(lambda depth, opener: _nested(depth, opener).decode(), st.integers(min_value=500, max_value=60_000),
              st.sampled_from(["[", "{\"a\":"])),
    st.text(st.characters(codec="utf-8"), max_size=50),
)
PROBE = json.dumps({"type": "probe"})


def test_it_answers_every_generated_websocket_frame_and_stays_open(asgi_server, world, quota_used) -> None:
    with tenant_context(world.tenant_a.pk):
        own_message = quota_used.messages.get().pk
    stack = ExitStack()
    sockets = [_socket(asgi_server, world.alice, quota_used, stack)]

    @FUZZ
    @given(frame=FRAMES)
    # What the fuzzing found first: a frame nested deeper than the parser's stack closed the socket
    # with 1011, and so did a message id of Infinity (JSON as Python writes it).
    @example(frame="[" * 5000 + "]" * 5000)
    @example(frame='{"type": "stop", "message_id": Infinity}')
    @example(frame='{"type": "resume", "message_id": -Infinity, "last_seq": 1}')
    # A number past Redis's stream ids broke the relay, which logged a traceback.
    @example(frame=json.dumps({"type": "resume", "message_id": own_message, "last_seq": 2**70}))
    def frames(frame: str | bytes) -> None:
        socket = sockets[-1]
        try:
            socket.send(frame)
            # Then a frame whose answer is known: everything before it answered the fuzzed frame.
            socket.send(PROBE)
            answers = []
            while True:
                answer = json.loads(socket.recv(timeout=30))
                if answer == {"type": "error", "error": "Unknown frame type: 'probe'."}:
                    break
                answers.append(answer)
        except Exception:
            # The socket died (the failure being reported): the next example gets a fresh one, so
            # Hypothesis can replay and shrink this one on its own.
            sockets.append(_socket(asgi_server, world.alice, quota_used, stack))
            raise
        if not answers:
            # Accepted: a stop of this conversation's own message answers nothing, a resume of it
            # gets the message's end from its relay, which may come after the probe's answer.
            kind = json.loads(frame)["type"]
            if kind == "stop":
                return
            assert kind == "resume", frame
            answers.append(json.loads(socket.recv(timeout=30)))
            assert answers[-1]["type"] == "end", (frame, answers)
        assert all(a["type"] in ("error", "chunk", "reset", "end") for a in answers), answers
        # A failing relay would say the stream was interrupted: a server error, said politely.
        assert not any("interrupted" in a.get("error", "") for a in answers), (frame, answers)

    with stack:
        frames()
