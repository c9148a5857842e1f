from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.anchors import anchor_verified
from audit.chain import chains, verify_chain
from audit.models import PLATFORM_CHAIN


class Command(BaseCommand):
    help = "Verifies the audit hash chains and names the first broken event. Exits 1 on a break."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", type=int, help=f"only this tenant's chain ({PLATFORM_CHAIN}: platform)")

    def handle(self, *args: Any, **options: Any) -> None:
        keys = [options["tenant"]] if options["tenant"] is not None else chains()
        reports = [verify_chain(key) for key in keys]
        for report in reports:
            self.stdout.write(report.describe())
        anchor_verified(reports)
        broken = sum(not report.ok for report in reports)
        if broken:
            raise CommandError(f"{broken} of {len(keys)} audit chain(s) are broken", returncode=1)
