"""A user's open chat sockets follow their access: logout, deactivation or a role change closes them.

A WebSocket checks access once, when it connects; without this, a deactivated member kept chatting in
a tab already open (issue 12). Every chat consumer joins its user's group on the channel layer,
which all daphne processes share, and closes when told that the user's access changed; the page
then reconnects, and the connection checks access again. Each submit re-checks it too, for a change
that did not announce itself (a direct database edit, a lost message).
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

# Close code for "your access changed": the page reconnects, and the new connection is checked.
CLOSE_ACCESS_CHANGED = 4403
ACCESS_CHANGED = "access.changed"  # the consumer's handler: access_changed


def user_group(user_id: int) -> str:
    return f"chat-user-{user_id}"


def sockets_close_for_user(user_id: int, reason: str) -> None:
    """Closes every open chat socket of the user, once the surrounding transaction commits."""

    def send() -> None:
        layer: Any = get_channel_layer()
        async_to_sync(layer.group_send)(user_group(user_id), {"type": ACCESS_CHANGED, "reason": reason})

    transaction.on_commit(send)


def on_logout(sender: object, user: Any = None, **_: object) -> None:
    """django.contrib.auth's user_logged_out receiver (connected in chat.apps)."""
    if user is not None:
        sockets_close_for_user(user.pk, "logged out")
