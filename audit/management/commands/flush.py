"""Django's flush, allowed past the audit trail's TRUNCATE trigger.

The test runner empties the test database with `flush` between transactional tests; the trigger
otherwise (rightly) refuses TRUNCATE on the audit tables. The flag is per session and only the
table owner can TRUNCATE at all, so the application role gains nothing from it.
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands.flush import Command as FlushCommand
from django.db import connections


class Command(FlushCommand):
    def handle(self, **options: Any) -> None:
        with connections[options["database"]].cursor() as cursor:
            cursor.execute("SELECT set_config('audit.flush', 'on', false)")
        try:
            super().handle(**options)
        finally:
            with connections[options["database"]].cursor() as cursor:
                cursor.execute("SELECT set_config('audit.flush', 'off', false)")
