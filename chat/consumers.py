"""The chat WebSocket: submit, stop, and relay of numbered token chunks from Redis Streams.

Client -> server frames (JSON):
  {"type": "submit", "text": "..."}
  {"type": "resume", "message_id": 12, "last_seq": 7}   # reconnect: replay what came after 7
  {"type": "stop", "message_id": 12}
Server -> client frames:
  {"type": "submitted", "user_html": ..., "reply_html": ..., "message_id": 12, "title": ...}
  {"type": "chunk", "message_id": 12, "seq": 8, "text": "..."}
  {"type": "reset", "message_id": 12, "seq": 9}
  {"type": "end", "message_id": 12, "seq": 10, "status": "done", "html": ...}
  {"type": "error", "error": "..."}
Close codes before accept: 4401 not logged in, 4404 unknown or foreign conversation. After accept:
4403 the user's access changed (logout, deactivation, role change; see chat/socket_access.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, cast

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.contrib.auth.models import User
from django.http import Http404
from django.template.loader import render_to_string

from audit.services import actor_from_scope
from chat import services, streams
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
        found = await self._load_conversation(user)
        if found is None:
            # Refused before accept: another tenant's (or unknown) id learns nothing.
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.user = cast(User, user)  # authenticated: the lazy object stands for a User
        self.membership, self.conversation = found
        self.redis = streams.reader_client()
        self.relays: dict[int, asyncio.Task[None]] = {}
        # Logout, deactivation or a role change closes this socket (chat.socket_access).
        await self.channel_layer.group_add(user_group(self.user.pk), self.channel_name)
        await self.accept()

    @database_sync_to_async
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
        # Wait for the relays to unwind so their blocking XREADs release the connection.
        await asyncio.gather(*relays, return_exceptions=True)
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

    async def _error(self, error: str) -> None:
        await self.send(text_data=json.dumps({"type": "error", "error": error}))

    # -- submit ---------------------------------------------------------------------------------

    async def _submit(self, frame: dict[str, Any]) -> None:
        text = frame.get("text")
        if not isinstance(text, str):
            await self._error("A message needs text.")
            return
        try:
            user_message, reply = await self._store_turn(text)
        except services.ChatInputError as exc:
            await self._error(str(exc))
            return
        except Http404:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        except AccessChanged:
            await self._error("Your access to this organisation changed; reload the page.")
            await self.close(code=CLOSE_ACCESS_CHANGED)
            return
        await self.send(
            text_data=json.dumps(
                {
                    "type": "submitted",
                    "message_id": reply.pk,
                    # The first question names a new conversation; the sidebar shows it at once.
                    "title": self.conversation.title,
                    "user_html": await self._render(user_message),
                    "reply_html": await self._render(reply),
                }
            )
        )
        self._start_relay(reply, 0)

    @database_sync_to_async
    def _store_turn(self, text: str) -> tuple[Message, Message]:
        with self._tenant():
            # Access is checked again on every submit: the socket may have outlived it.
            membership = membership_get_exact(self.user, self.membership.tenant_id)
            if membership is None or not User.objects.filter(pk=self.user.pk, is_active=True).exists():
                raise AccessChanged
            self.membership = membership
            # Re-read the conversation: it may have been deleted in another tab since connect.
            conversation = conversation_get_for_user(self.user, self.membership.tenant, self.conversation.pk)
            self.conversation = conversation
            return services.message_submit(
                conversation=conversation, text=text, actor=actor_from_scope(self.scope, self.membership.role)
            )

    @database_sync_to_async
    def _render(self, message: Message) -> str:
        return render_to_string("chat/conversation.html#message", {"message": message})

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

    @database_sync_to_async
    def _cancel(self, message: Message) -> None:
        with self._tenant():
            services.message_cancel(message=message, actor=actor_from_scope(self.scope, self.membership.role))

    @database_sync_to_async
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
        try:
            async for entry in streams.follow(self.redis, message, last_seq,
                                              is_final=lambda: self._is_final(message_id)):
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
            self.relays.pop(message_id, None)

    async def _is_final(self, message_id: int) -> bool:
        current = await self._get_message(message_id)
        return current is not None and current.is_final

    @database_sync_to_async
    def _get_message(self, message_id: int) -> Message | None:
        with self._tenant():
            return message_find(message_id)

    async def _send_end(self, message_id: int, seq: int) -> None:
        message = await self._get_message(message_id)
        if message is None:  # deleted with its conversation meanwhile
            return
        await self._send_json(
            type="end", message_id=message_id, seq=seq, status=message.status,
            error=message.error, html=await self._render(message),
        )

    async def _send_json(self, **payload: Any) -> None:
        await self.send(text_data=json.dumps(payload))
