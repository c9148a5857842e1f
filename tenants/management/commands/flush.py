"""Django's flush, run as the owner role and allowed past the audit trail's TRUNCATE trigger.

The test runner empties the test database with `flush` between transactional tests. The app
role has no TRUNCATE privilege (TRUNCATE ignores row-level security), and the audit trigger
refuses TRUNCATE unless this session says it is a flush.
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands.flush import Command as FlushCommand

from tenants.rls import as_owner


class Command(FlushCommand):
    def handle(self, **options: Any) -> None:
        with as_owner(options["database"]) as conn:
            with conn.cursor() as cursor:
                cursor.execute("SELECT set_config('audit.flush', 'on', false)")
            super().handle(**options)
