from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import Permission, User
from django.db import transaction

from audit.services import SYSTEM, Actor, audit_record
from tenants.models import Membership, Role, Tenant
from tenants.rls import tenant_context


DEMO_PASSWORD = "deepseek-demo"
DEMO_USERS = (
    ("employee", Role.EMPLOYEE),
    ("knowledge", Role.KNOWLEDGE_ADMIN),
    ("compliance", Role.COMPLIANCE),
    ("owner", Role.OWNER),
)
# Owners manage their tenant's memberships in Django admin (scoped to their tenant).
OWNER_ADMIN_PERMISSIONS = ("view_membership", "change_membership", "add_membership")


@transaction.atomic
def tenant_create(*, name: str, slug: str, actor: Actor) -> Tenant:
    tenant = Tenant.objects.create(name=name, slug=slug)
    audit_record(tenant_id=tenant.pk, actor=actor, action="tenant.create", target_type="tenant",
                 target_id=tenant.pk, payload={"name": name, "slug": slug})
    return tenant


def membership_create(*, tenant: Tenant, user: User, role: str, actor: Actor) -> Membership:
    with tenant_context(tenant.pk):
        return _membership_create(tenant=tenant, user=user, role=role, actor=actor)


def _membership_create(*, tenant: Tenant, user: User, role: str, actor: Actor) -> Membership:
    membership = Membership.objects.create(tenant=tenant, user=user, role=role)
    if role == Role.OWNER and not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
        user.user_permissions.add(*Permission.objects.filter(codename__in=OWNER_ADMIN_PERMISSIONS))
    audit_record(tenant_id=tenant.pk, actor=actor, action="membership.create", target_type="membership",
                 target_id=membership.pk, payload={"user_id": user.pk, "role": role})
    return membership


@dataclass(frozen=True)
class DemoLogin:
    username: str
    password: str
    role: str


@transaction.atomic
def demo_tenant_seed(*, slug: str = "demo", name: str = "Demo Company", password: str = DEMO_PASSWORD,
                     prefix: str = "") -> list[DemoLogin]:
    """A demo tenant with one user per role. Idempotent: a second run resets nothing but passwords."""
    tenant = Tenant.objects.filter(slug=slug).first() or tenant_create(name=name, slug=slug, actor=SYSTEM)
    logins = []
    for base, role in DEMO_USERS:
        username = f"{prefix}{base}"
        user = User.objects.filter(username=username).first()
        if user is None:
            user = User.objects.create_user(username=username, password=password)
        else:
            user.set_password(password)
            user.save(update_fields=["password"])
        with tenant_context(tenant.pk):
            if not Membership.objects.filter(tenant=tenant, user=user).exists():
                membership_create(tenant=tenant, user=user, role=role, actor=SYSTEM)
        logins.append(DemoLogin(username=username, password=password, role=str(role.label)))
    return logins
