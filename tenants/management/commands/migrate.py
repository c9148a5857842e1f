"""`migrate` always runs as the owner role: the app role may not create or alter tables."""

from __future__ import annotations

from typing import Any

from django.core.management.commands.migrate import Command as MigrateCommand

from tenants.rls import as_owner


class Command(MigrateCommand):
    def handle(self, *args: Any, **options: Any) -> None:
        with as_owner(options["database"]):
            super().handle(*args, **options)
