from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.chain import chains, verify_chain
from audit.models import PLATFORM_CHAIN


class Command(BaseCommand):
    help = "Verifies the audit hash chains and names the first broken event. Exits 1 on a break."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", type=int, help=f"only this tenant's chain ({PLATFORM_CHAIN}: platform)")

    def handle(self, *args: Any, **options: Any) -> None:
        keys = [options["tenant"]] if options["tenant"] is not None else chains()
        broken = 0
        for key in keys:
            report = verify_chain(key)
            self.stdout.write(report.describe())
            broken += not report.ok
        if broken:
            raise CommandError(f"{broken} of {len(keys)} audit chain(s) are broken", returncode=1)
