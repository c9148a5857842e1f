from __future__ import annotations

from django.conf import settings
from django.db import models

from tenants.models import TenantOwned


class ApiKey(TenantOwned):
    """A bearer key for the OpenAI-compatible API. It acts as one user of its tenant.

    Only the key's SHA-256 and a short visible prefix are stored; the key itself is shown once,
    when it is created.
    """

    name = models.CharField(max_length=100)
    # The first characters of the key ("dsw-" and 8 more), so an owner can tell keys apart.
    prefix = models.CharField(max_length=16)
    key_hash = models.CharField(max_length=64, unique=True)
    # Requests made with the key run as this user: their role and knowledge-base access apply.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None
