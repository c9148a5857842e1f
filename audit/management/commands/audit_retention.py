from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.models import PLATFORM_CHAIN
from audit.selectors import retention_days
from audit.services import SYSTEM, RetentionError, audit_retention_set


class Command(BaseCommand):
    help = ("Shows or sets (as the platform, through the owner role) how many days a chain keeps its audit "
            "events; never below AUDIT_MIN_RETENTION_DAYS. Tenant owners can only lengthen theirs.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", type=int, required=True, help=f"the chain ({PLATFORM_CHAIN}: platform)")
        parser.add_argument("--days", type=int, help="the new retention; without it, show the current one")

    def handle(self, *args: Any, **options: Any) -> None:
        chain = options["tenant"]
        if options["days"] is not None:
            try:
                audit_retention_set(chain=chain, days=options["days"], actor=SYSTEM)
            except RetentionError as exc:
                raise CommandError(str(exc)) from None
        self.stdout.write(f"chain {chain}: {retention_days(chain)} days")
