from __future__ import annotations

from django.conf import settings
from django.db import models


class Role(models.TextChoices):
    EMPLOYEE = "employee", "Employee"
    KNOWLEDGE_ADMIN = "knowledge_admin", "Knowledge admin"
    COMPLIANCE = "compliance", "Compliance"
    OWNER = "owner", "Tenant owner"


class Tenant(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=60, unique=True)
    # Audit events older than this are pruned (as a whole, verified prefix of the chain).
    # Quotas; 0 means unlimited.
    quota_messages_per_user_day = models.PositiveIntegerField(default=200)
    quota_tokens_per_month = models.PositiveBigIntegerField(default=2_000_000)
    # A sensitive tenant's turns are answered only by the local model, never by a remote backend
    # (INFERENCE_BACKENDS): its prompts and passages must not leave the installation.
    sensitive = models.BooleanField(default=False)
    # Its share of the GPU against other tenants while turns wait (chat.dispatch): a tenant of
    # weight 2 gets twice the turns of one of weight 1. Set by the platform only
    # (`manage.py tenant_scheduling`), never by the tenant's owner.
    schedule_weight = models.PositiveSmallIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class TenantOwned(models.Model):
    """Base for every tenant-owned row: the tenant is explicit on the row itself."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")

    class Meta:
        abstract = True


class Membership(TenantOwned):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.EMPLOYEE)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique_tenant_user")]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant} as {self.role}"
