from __future__ import annotations

from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out

        from chat.socket_access import on_logout

        user_logged_out.connect(on_logout, dispatch_uid="chat.socket_access.on_logout")
