from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from console.services import demo_tenant_seed


class Command(BaseCommand):
    help = "Creates the demo tenant with one user per role and prints the logins."

    def handle(self, *args: Any, **options: Any) -> None:
        for login in demo_tenant_seed():
            self.stdout.write(f"  {login.role:<16} {login.username:<12} password: {login.password}")
