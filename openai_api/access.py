"""Who is calling the API: the bearer key, its tenant, and the member it acts as."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone

from audit.services import Actor, actor_for
from openai_api.models import ApiKey
from openai_api.wire import ApiError
from tenants.models import Membership
from tenants.rls import tenant_context

KEY_PREFIX = "dsw-"
# last_used_at is written at most this often per key, not on every request.
TOUCH_INTERVAL = timedelta(minutes=1)


@dataclass(frozen=True)
class ApiCaller:
    key: ApiKey
    # The key's user in the key's tenant (active), with its tenant and user loaded.
    membership: Membership

    @property
    def tenant_id(self) -> int:
        return self.membership.tenant_id

    def context(self) -> AbstractContextManager[None]:
        """Every database step of a request runs in its own transaction, in the key's tenant."""
        return tenant_context(self.membership.tenant_id, self.membership.user_id)

    def actor(self, *, ip: str | None, user_agent: str, trace_id: str) -> Actor:
        # The audit trail names both the user and the key that acted for them.
        return actor_for(user_id=self.membership.user_id, role=self.membership.role,
                         name=f"{self.membership.user.get_username()} (API key {self.key.prefix}…)",
                         ip=ip, user_agent=user_agent, trace_id=trace_id)


def key_hash(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key")


@contextmanager
def _key_visible(digest: str) -> Iterator[None]:
    """A transaction in which row-level security shows the one key row with this hash."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('app.api_key_hash', %s, true)", [digest])
        yield
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('app.api_key_hash', '', true)")


def api_caller_get(authorization: str) -> ApiCaller:
    """The caller of an `Authorization: Bearer <key>` header, or a 401 ApiError.

    Unknown, revoked and malformed keys, and keys whose user was deactivated (as a user, or in
    the key's tenant), all get 401, the same for every tenant.
    """
    scheme, _, plaintext = authorization.strip().partition(" ")
    plaintext = plaintext.strip()
    if scheme.lower() != "bearer" or not plaintext:
        raise unauthorized("You didn't provide an API key: send it as `Authorization: Bearer <key>`.")
    if not plaintext.startswith(KEY_PREFIX) or len(plaintext) > 200:
        raise unauthorized("Incorrect API key provided.")
    with _key_visible(key_hash(plaintext)):
        key = ApiKey.objects.filter(key_hash=key_hash(plaintext)).first()
    if key is None:
        raise unauthorized("Incorrect API key provided.")
    if key.is_revoked:
        raise unauthorized("This API key has been revoked.")
    with tenant_context(key.tenant_id, key.user_id):
        membership = (Membership.objects.select_related("tenant", "user")
                      .filter(tenant_id=key.tenant_id, user_id=key.user_id, is_active=True, user__is_active=True)
                      .first())
        if membership is None:
            raise unauthorized("This API key's user has been deactivated.")
        now = timezone.now()
        if key.last_used_at is None or now - key.last_used_at >= TOUCH_INTERVAL:
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return ApiCaller(key=key, membership=membership)
