from __future__ import annotations

from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed

        from audit import receivers

        user_logged_in.connect(receivers.on_logged_in, dispatch_uid="audit-login")
        user_logged_out.connect(receivers.on_logged_out, dispatch_uid="audit-logout")
        user_login_failed.connect(receivers.on_login_failed, dispatch_uid="audit-login-failed")
