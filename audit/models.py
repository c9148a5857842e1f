from __future__ import annotations

from django.db import models

from tenants.models import Tenant

# Chain key of events that belong to no tenant (logins with unknown user names, platform actions).
PLATFORM_CHAIN = 0


class Outcome(models.TextChoices):
    SUCCESS = "success", "Success"
    FAILURE = "failure", "Failure"


class AuditEvent(models.Model):
    """One append-only audit record, linked to its chain's previous event by `prev_hash`.

    Database triggers reject UPDATE, DELETE and TRUNCATE, and the application role may only
    INSERT and SELECT (migration 0002). `hash` is an HMAC over the row and `prev_hash`, keyed by
    a secret outside the database, so even a database superuser cannot forge a consistent chain.
    """

    # NULL for platform events. PROTECT: a tenant with an audit trail is never cascade-deleted.
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    seq = models.BigIntegerField(help_text="Position in the chain, from 1.")
    occurred_at = models.DateTimeField()
    actor_id = models.BigIntegerField(null=True, blank=True)
    actor_name = models.CharField(max_length=150, blank=True)
    actor_role = models.CharField(max_length=32, blank=True)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    action = models.CharField(max_length=100)
    category = models.CharField(max_length=40, blank=True)
    target_type = models.CharField(max_length=100, blank=True)
    target_id = models.CharField(max_length=200, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.SUCCESS)
    payload = models.JSONField(default=dict, blank=True)
    trace_id = models.CharField(max_length=64, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "seq"], name="audit_unique_chain_seq", nulls_distinct=False)
        ]
        indexes = [
            models.Index(fields=["tenant", "occurred_at"]),
            models.Index(fields=["tenant", "action"]),
            models.Index(fields=["tenant", "hash"]),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} {self.target_type}:{self.target_id}"

    @property
    def chain(self) -> int:
        return self.tenant_id or PLATFORM_CHAIN


class AuditHead(models.Model):
    """The last event of each chain. Without it, deleting the newest events would go unnoticed."""

    chain = models.BigIntegerField(primary_key=True)
    seq = models.BigIntegerField()
    hash = models.CharField(max_length=64)
    mac = models.CharField(max_length=64)


class AuditRetention(models.Model):
    """How many days a chain keeps its events, when the platform set or an owner lengthened it.

    A chain without a row keeps AUDIT_DEFAULT_RETENTION_DAYS. The application role may only read
    this table (migration 0003): the platform writes it through a privileged job, and a tenant
    owner can only lengthen their own chain's retention (`audit_retention_lengthen`, in SQL). So
    the application, or whoever takes it over, cannot shorten a trail to erase it.
    """

    chain = models.BigIntegerField(primary_key=True)
    days = models.PositiveIntegerField()
    updated_at = models.DateTimeField(auto_now=True)


class AuditCheckpoint(models.Model):
    """Where a chain resumes after retention pruned its prefix: the last pruned event's seq and hash."""

    chain = models.BigIntegerField()
    seq = models.BigIntegerField()
    hash = models.CharField(max_length=64)
    pruned = models.BigIntegerField(help_text="Events removed by this pruning.")
    created_at = models.DateTimeField(auto_now_add=True)
    mac = models.CharField(max_length=64)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chain", "seq"], name="audit_checkpoint_unique")]
