"""The WebSocket auth stack: channels' session and auth middleware, with concurrent database work.

channels runs every `database_sync_to_async` call on one shared thread (thread-sensitive mode,
made for code that needs a single thread). A handshake's session and user lookups then wait in
one queue with every other socket's database work, and a storm of reconnecting tabs ran past
daphne's handshake budget (issue 12, finding 16). These lookups need no particular thread: they
run on the event loop's thread pool, each on its own pooled connection (settings.DB_POOL_MAX_SIZE).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from channels.auth import AuthMiddleware, get_user
from channels.db import DatabaseSyncToAsync
from channels.sessions import CookieMiddleware, SessionMiddleware

if TYPE_CHECKING:
    from channels.consumer import _ChannelScope

# channels' own lookup (session, user, session-hash check), on any pool thread. The stubs type
# get_user as a plain coroutine function; it is a DatabaseSyncToAsync, whose `func` is the lookup.
_get_user_concurrently = DatabaseSyncToAsync(get_user.func, thread_sensitive=False)  # type: ignore[attr-defined]


class ConcurrentAuthMiddleware(AuthMiddleware):
    async def resolve_scope(self, scope: _ChannelScope) -> None:
        lazy = scope["user"]  # set by populate_scope, as in channels' resolve_scope
        assert lazy is not None
        lazy._wrapped = await _get_user_concurrently(scope)


def ConcurrentAuthMiddlewareStack(inner: Any) -> Any:
    return CookieMiddleware(SessionMiddleware(ConcurrentAuthMiddleware(inner)))
