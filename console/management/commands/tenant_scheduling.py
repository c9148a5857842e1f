"""Shows or sets a tenant's scheduling weight: its share of the GPU while turns wait (chat.dispatch)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.services import SYSTEM
from console.services import tenant_scheduling_set
from tenants.models import Tenant


class Command(BaseCommand):
    help = ("Shows or sets (as the platform) a tenant's scheduling weight: a tenant of weight 2 gets twice "
            "the turns of a tenant of weight 1 while both have turns waiting. Audited as tenant.scheduling_set.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="the tenant's slug")
        parser.add_argument("--weight", type=int, help="the new weight (1-100); without it, show the current one")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"No tenant has the slug {options['tenant']!r}.")
        if options["weight"] is not None:
            try:
                tenant = tenant_scheduling_set(tenant=tenant, weight=options["weight"], actor=SYSTEM)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        self.stdout.write(f"{tenant.slug}: weight {tenant.schedule_weight}")
