"""The chat WebSocket: submit, stop, and relay of numbered token chunks from Redis Streams.

Client -> server frames (JSON):
  {"type": "submit", "text": "...", "client_id": "..."}   # same client_id again: same turn, no copy
  {"type": "resume", "message_id": 12, "last_seq": 7}   # reconnect: replay what came after 7
  {"type": "stop", "message_id": 12}
Server -> client frames:
  {"type": "submitted", "client_id": ..., "user_html": ..., "reply_html": ..., "message_id": 12, "title": ...}
  {"type": "queued", "message_id": 12, "ahead": 3}      # waiting in fair dispatch: 3 turns start first
  {"type": "chunk", "message_id": 12, "seq": 8, "text": "..."}
  {"type": "reset", "message_id": 12, "seq": 9}
  {"type": "end", "message_id": 12, "seq": 10, "status": "done", "html": ...}
  {"type": "error", "error": "...", "client_id": ...}   # client_id: that submit was refused
Close codes before accept: 4401 not logged in, 4404 unknown or foreign conversation. After accept:
4403 the user's access changed (logout, deactivation, role change; see chat/socket_access.py);
4429 the user or tenant has too many chat sockets open (chat/socket_limits.py), with a reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any, cast

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.contrib.auth.models import User
from django.db import DatabaseError
from django.http import Http404
from django.template.loader import render_to_string

from audit.services import actor_from_scope
from chat import dispatch, services, socket_limits, streams
from chat.models import Conversation, Message
from chat.selectors import conversation_get_for_user, message_find, message_get_in_conversation
from chat.socket_access import CLOSE_ACCESS_CHANGED, user_group
from tenants.access import membership_get_active, membership_get_exact
from tenants.middleware import SESSION_TENANT_KEY
from tenants.models import Membership
from tenants.rls import tenant_context

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
MAX_FRAME_CHARS = 64 * 1024
MAX_SEQ = 2**63
# How often a waiting turn's queue position is looked up and, when it changed, sent.
QUEUE_POSITION_INTERVAL_S = 1.0


def on_any_thread(func: Any) -> Any:
    """The consumer's database work (and rendering), on any thread of the event loop's pool.

    channels' `database_sync_to_async` runs everything on one shared thread by default. With
    hundreds of sockets, that one thread queued every socket's submit and renders behind each
    other's: a turn was answered in time, but its page started to follow the answer tens of seconds
    late (bench/load_streams.py). None of this work needs a particular thread: each call is its own
    transaction on a pooled connection, which channels gives back after the call.
    """
    return database_sync_to_async(func, thread_sensitive=False)


def _render(message: Message) -> str:
    return render_to_string("chat/conversation.html#message", {"message": message})


class AccessChanged(Exception):
    """The user's membership or account is no longer active (or moved): the socket must close."""


class ChatConsumer(AsyncWebsocketConsumer):
    user: User
    conversation: Conversation
    membership: Membership

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        # On any pool thread, not channels' one shared thread: a storm of reconnecting tabs must
        # not queue every handshake behind the others (deepseek_web/websocket_auth.py).
        found = await on_any_thread(self._load_conversation)(user)
        if found is None:
            # Refused before accept: another tenant's (or unknown) id learns nothing.
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.user = cast(User, user)  # authenticated: the lazy object stands for a User
        self.membership, self.conversation = found
        self.redis = streams.reader_client()
        self.relays: dict[int, asyncio.Task[None]] = {}
        refused = await socket_limits.acquire(self.redis, **self._slot())
        if refused is not None:
            # Accepted first, so the page can read the close code and show the reason.
            await self.accept()
            await self._error(refused)
            await self.close(code=socket_limits.CLOSE_TOO_MANY, reason=refused)
            return
        self.slot_renewal = asyncio.create_task(self._renew_slot())
        # Logout, deactivation or a role change closes this socket (chat.socket_access).
        await self.channel_layer.group_add(user_group(self.user.pk), self.channel_name)
        await self.accept()

    def _load_conversation(self, user: Any) -> tuple[Membership, Conversation] | None:
        session = self.scope.get("session")
        with tenant_context(None, user.pk):
            membership = membership_get_active(user, session.get(SESSION_TENANT_KEY) if session else None)
        if membership is None:
            return None
        try:
            with tenant_context(membership.tenant_id, user.pk):
                conversation = conversation_get_for_user(
                    user, membership.tenant, self.scope["url_route"]["kwargs"]["conversation_id"]
                )
        except Http404:
            return None
        return membership, conversation

    def _slot(self) -> dict[str, Any]:
        return {"tenant_id": self.membership.tenant_id, "user_id": self.user.pk, "socket_id": self.channel_name}

    async def _renew_slot(self) -> None:
        while True:
            # Spread: tabs that connected together (a restart, a load test) must not all renew in
            # the same instant, every RENEW_S.
            await asyncio.sleep(socket_limits.RENEW_S * random.uniform(0.5, 1.0))
            try:
                await socket_limits.renew(self.redis, **self._slot())
            except Exception:  # logged: a Redis hiccup must not close the socket; the next renewal retries
                logger.warning("could not renew the socket slot of %s", self.channel_name, exc_info=True)

    def _tenant(self) -> Any:
        """Every database call of this consumer runs in its own transaction, in this tenant."""
        return tenant_context(self.membership.tenant_id, self.user.pk)

    async def access_changed(self, event: dict[str, Any]) -> None:
        """The user's access changed elsewhere: close, so the page reconnects and is checked again."""
        await self._error(f"Your access changed ({event.get('reason', '')}); reconnecting.")
        await self.close(code=CLOSE_ACCESS_CHANGED)

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "user"):
            await self.channel_layer.group_discard(user_group(self.user.pk), self.channel_name)
        relays = list(getattr(self, "relays", {}).values())
        for task in relays:
            task.cancel()
        # Wait for the relays to unwind, so they stop following their streams (streams.StreamHub).
        await asyncio.gather(*relays, return_exceptions=True)
        renewal = getattr(self, "slot_renewal", None)
        if renewal is not None:
            renewal.cancel()
            await asyncio.gather(renewal, return_exceptions=True)
            try:
                await socket_limits.release(self.redis, **self._slot())
            except Exception:  # logged: the slot then expires by itself (SLOT_TTL_S)
                logger.warning("could not release the socket slot of %s", self.channel_name, exc_info=True)
        if hasattr(self, "redis"):
            await self.redis.aclose()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None or len(text_data) > MAX_FRAME_CHARS * 2:
            await self._error("Frames must be JSON text.")
            return
        try:
            frame = json.loads(text_data)
        except json.JSONDecodeError:
            await self._error("That frame was not valid JSON; it was ignored.")
            return
        except RecursionError:  # nesting deeper than the parser's stack: refused, the socket stays
            await self._error("That frame is nested too deeply; it was ignored.")
            return
        if not isinstance(frame, dict):
            await self._error("A frame must be a JSON object with a \"type\".")
            return
        handler = {"submit": self._submit, "resume": self._resume, "stop": self._stop}.get(str(frame.get("type")))
        if handler is None:
            await self._error(f"Unknown frame type: {str(frame.get('type'))[:40]!r}.")
            return
        await handler(frame)

    async def _error(self, error: str, *, client_id: str = "") -> None:
        frame = {"type": "error", "error": error}
        if client_id:
            frame["client_id"] = client_id  # the page stops re-sending that submit
        await self.send(text_data=json.dumps(frame))

    # -- submit ---------------------------------------------------------------------------------

    async def _submit(self, frame: dict[str, Any]) -> None:
        text = frame.get("text")
        client_id = frame.get("client_id", "")
        if not isinstance(client_id, str):
            client_id = ""
        client_id = client_id[:services.CLIENT_ID_MAX_CHARS + 1]
        if not isinstance(text, str):
            await self._error("A message needs text.", client_id=client_id)
            return
        try:
            reply, user_html, reply_html = await self._store_turn(text, client_id)
        except services.ChatInputError as exc:
            # Refused (validation, quota): an error frame, and the socket stays open.
            await self._error(str(exc), client_id=client_id)
            return
        except Http404:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        except AccessChanged:
            await self._error("Your access to this organisation changed; reload the page.")
            await self.close(code=CLOSE_ACCESS_CHANGED)
            return
        except DatabaseError:
            # An overloaded or restarting database must not cost the socket (and with it every
            # answer this page follows): the page keeps the text and may send it again.
            logger.exception("submit in conversation %s could not be stored", self.conversation.pk)
            await self._error("Your message could not be stored just now; please send it again.",
                              client_id=client_id)
            return
        await self.send(
            text_data=json.dumps(
                {
                    "type": "submitted",
                    "client_id": client_id,
                    "message_id": reply.pk,
                    # The first question names a new conversation; the sidebar shows it at once.
                    "title": self.conversation.title,
                    "user_html": user_html,
                    "reply_html": reply_html,
                }
            )
        )
        if not reply.is_final:  # a re-sent submit of a finished turn: reply_html is the answer
            self._start_relay(reply, 0)

    @on_any_thread
    def _store_turn(self, text: str, client_id: str) -> tuple[Message, str, str]:
        """Stores the turn and renders both messages in one trip to the pool: under a burst of
        submits, each further trip waited behind every other socket's, and the relay with it."""
        with self._tenant():
            # Access is checked again on every submit: the socket may have outlived it.
            membership = membership_get_exact(self.user, self.membership.tenant_id)
            if membership is None or not User.objects.filter(pk=self.user.pk, is_active=True).exists():
                raise AccessChanged
            self.membership = membership
            # Re-read the conversation: it may have been deleted in another tab since connect.
            conversation = conversation_get_for_user(self.user, self.membership.tenant, self.conversation.pk)
            self.conversation = conversation
            # The same client id again (a re-send after a lost confirmation) returns the stored turn.
            user_message, reply = services.message_submit(
                conversation=conversation, text=text, actor=actor_from_scope(self.scope, self.membership.role),
                client_id=client_id,
            )
        return reply, _render(user_message), _render(reply)

    # -- resume and stop ------------------------------------------------------------------------

    async def _resume(self, frame: dict[str, Any]) -> None:
        message = await self._message_from_frame(frame)
        last_seq = frame.get("last_seq", 0)
        # A stream entry's number is a Redis stream id, below 2**64: a larger one broke the relay.
        if message is None or not isinstance(last_seq, int) or not 0 <= last_seq < MAX_SEQ:
            await self._error("resume needs a message of this conversation and a last_seq >= 0.")
            return
        self._start_relay(message, last_seq)

    async def _stop(self, frame: dict[str, Any]) -> None:
        message = await self._message_from_frame(frame)
        if message is None:
            await self._error("stop needs a message of this conversation.")
            return
        await self._cancel(message)

    @on_any_thread
    def _cancel(self, message: Message) -> None:
        with self._tenant():
            services.message_cancel(message=message, actor=actor_from_scope(self.scope, self.membership.role))

    @on_any_thread
    def _message_from_frame(self, frame: dict[str, Any]) -> Message | None:
        try:
            with self._tenant():
                return message_get_in_conversation(self.conversation, frame.get("message_id", ""))
        except Http404:
            return None

    # -- relay ----------------------------------------------------------------------------------

    def _start_relay(self, message: Message, last_seq: int) -> None:
        previous = self.relays.pop(message.pk, None)
        if previous is not None:
            previous.cancel()
        self.relays[message.pk] = asyncio.create_task(self._relay(message, last_seq))

    async def _relay(self, message: Message, last_seq: int) -> None:
        """Sends every entry after `last_seq`, in order, until the turn's end entry."""
        message_id = message.pk
        # While the turn waits in fair dispatch, the page is told how many turns start before it.
        position = asyncio.create_task(self._announce_position(message_id)) if not message.is_final else None
        try:
            async for entry in streams.follow(self.redis, message, last_seq,
                                              is_final=lambda: self._is_final(message_id)):
                if position is not None:
                    position.cancel()
                    position = None
                if entry.kind == "token":
                    await self._send_json(type="chunk", message_id=message_id, seq=entry.seq,
                                          text=entry.fields.get("text", ""))
                elif entry.kind == "reset":
                    await self._send_json(type="reset", message_id=message_id, seq=entry.seq)
                elif entry.kind == "end":
                    await self._send_end(message_id, entry.seq)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("relay of message %s failed", message_id)
            await self._error("The live stream was interrupted; reload the page to see the answer.")
        finally:
            if position is not None:
                position.cancel()
            self.relays.pop(message_id, None)

    async def _announce_position(self, message_id: int) -> None:
        last: int | None = None
        while True:
            ahead = await sync_to_async(dispatch.queue_position, thread_sensitive=False)(message_id=message_id)
            if ahead is None:
                return  # a worker took it (or it was never queued here: fifo, or already running)
            if ahead != last:
                await self._send_json(type="queued", message_id=message_id, ahead=ahead)
                last = ahead
            await asyncio.sleep(QUEUE_POSITION_INTERVAL_S)

    async def _is_final(self, message_id: int) -> bool:
        current = await self._get_message(message_id)
        return current is not None and current.is_final

    def _find(self, message_id: int) -> Message | None:
        with self._tenant():
            return message_find(message_id)

    @on_any_thread
    def _get_message(self, message_id: int) -> Message | None:
        return self._find(message_id)

    async def _send_end(self, message_id: int, seq: int) -> None:
        found = await self._get_rendered_message(message_id)
        if found is None:  # deleted with its conversation meanwhile
            return
        message, html = found
        await self._send_json(
            type="end", message_id=message_id, seq=seq, status=message.status, error=message.error, html=html,
        )

    @on_any_thread
    def _get_rendered_message(self, message_id: int) -> tuple[Message, str] | None:
        message = self._find(message_id)
        return None if message is None else (message, _render(message))

    async def _send_json(self, **payload: Any) -> None:
        await self.send(text_data=json.dumps(payload))
