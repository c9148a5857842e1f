from __future__ import annotations

from django.db import models

from tenants.models import TenantOwned


class Outcome(models.TextChoices):
    SUCCESS = "success", "Success"
    FAILURE = "failure", "Failure"


class AuditEvent(TenantOwned):
    """One append-only audit record. `prev_hash` links it to the tenant's previous event."""

    seq = models.BigIntegerField(help_text="Position in the tenant's chain, from 1.")
    occurred_at = models.DateTimeField()
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor_role = models.CharField(max_length=32, blank=True)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    action = models.CharField(max_length=100)
    target_type = models.CharField(max_length=100, blank=True)
    target_id = models.CharField(max_length=100, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.SUCCESS)
    payload = models.JSONField(default=dict, blank=True)
    trace_id = models.CharField(max_length=64, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "seq"], name="audit_unique_tenant_seq")]
        indexes = [models.Index(fields=["tenant", "occurred_at"]), models.Index(fields=["tenant", "action"])]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} {self.target_type}:{self.target_id}"
