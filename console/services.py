"""The owner's console writes: tenants, members and their roles, settings; each one audited."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import Permission, User
from django.db import transaction

from audit.export import FORMULA_PREFIXES
from audit.selectors import retention_days
from audit.services import SYSTEM, Actor, RetentionError, audit_record, audit_retention_lengthen
from chat.socket_access import sockets_close_for_user
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


MAX_SCHEDULE_WEIGHT = 100


@transaction.atomic
def tenant_scheduling_set(*, tenant: Tenant, weight: int, actor: Actor) -> Tenant:
    """The platform sets a tenant's share of the GPU (chat.dispatch); owners have no say in it."""
    if not 1 <= weight <= MAX_SCHEDULE_WEIGHT:
        raise ValueError(f"A scheduling weight is between 1 and {MAX_SCHEDULE_WEIGHT}; got {weight}.")
    previous = tenant.schedule_weight
    tenant.schedule_weight = weight
    tenant.save(update_fields=["schedule_weight"])
    with tenant_context(tenant.pk):
        audit_record(tenant_id=tenant.pk, actor=actor, action="tenant.scheduling_set", target_type="tenant",
                     target_id=tenant.pk, payload={"weight": weight, "previous": previous})
    return tenant


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
    """A demo tenant with one user per role. Idempotent: a second run resets nothing, passwords
    included (a user who changed theirs keeps it; the login then shows it as unchanged)."""
    tenant = Tenant.objects.filter(slug=slug).first() or tenant_create(name=name, slug=slug, actor=SYSTEM)
    logins = []
    for base, role in DEMO_USERS:
        username = f"{prefix}{base}"
        user = User.objects.filter(username=username).first()
        shown = password
        if user is None:
            user = User.objects.create_user(username=username, password=password)
        elif not user.check_password(password):
            shown = "(changed since it was created)"
        with tenant_context(tenant.pk):
            if not Membership.objects.filter(tenant=tenant, user=user).exists():
                membership_create(tenant=tenant, user=user, role=role, actor=SYSTEM)
        logins.append(DemoLogin(username=username, password=shown, role=str(role.label)))
    return logins


class MembershipError(ValueError):
    """A console change that cannot be made; the message says why, for the owner."""


@transaction.atomic
def user_create(*, tenant: Tenant, username: str, password: str, role: str, actor: Actor) -> Membership:
    """A new user account, member of `tenant` with `role`. Caller holds the tenant context."""
    from django.contrib.auth.password_validation import validate_password
    from django.contrib.auth.validators import UnicodeUsernameValidator
    from django.core.exceptions import ValidationError

    username = username.strip()
    if not username:
        raise MembershipError("A user name is required.")
    try:
        # Django's rule for user names (its User model's own validator): letters of any script,
        # digits and @/./+/-/_, so no markup and no spaces.
        UnicodeUsernameValidator()(username)
    except ValidationError as exc:
        raise MembershipError(" ".join(exc.messages)) from None
    if username.startswith(FORMULA_PREFIXES):
        # The validator allows +, - and @ anywhere; a name travels into exports and spreadsheets
        # beyond our neutralised audit CSV, where a leading one starts a formula.
        raise MembershipError("A user name cannot start with =, +, - or @ (a spreadsheet would run it as a formula).")
    if role not in Role.values:
        raise MembershipError(f"Unknown role {role!r}.")
    if User.objects.filter(username__iexact=username).exists():
        raise MembershipError(f"The user name {username!r} is already taken.")
    candidate = User(username=username)
    try:
        validate_password(password, user=candidate)
    except ValidationError as exc:
        raise MembershipError(" ".join(exc.messages)) from None
    user = User.objects.create_user(username=username, password=password)
    audit_record(tenant_id=tenant.pk, actor=actor, action="user.create", target_type="user", target_id=user.pk,
                 payload={"username": username})
    return _membership_create(tenant=tenant, user=user, role=role, actor=actor)


def _owners_left(membership: Membership) -> int:
    return Membership.objects.filter(tenant_id=membership.tenant_id, role=Role.OWNER, is_active=True).exclude(
        pk=membership.pk).count()


@transaction.atomic
def membership_change_role(*, membership: Membership, role: str, actor: Actor) -> Membership:
    if role not in Role.values:
        raise MembershipError(f"Unknown role {role!r}.")
    if membership.role == role:
        return membership
    if membership.role == Role.OWNER and _owners_left(membership) == 0:
        raise MembershipError("The tenant needs at least one active owner.")
    previous = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    if role == Role.OWNER and not membership.user.is_staff:
        membership.user.is_staff = True
        membership.user.save(update_fields=["is_staff"])
        membership.user.user_permissions.add(*Permission.objects.filter(codename__in=OWNER_ADMIN_PERMISSIONS))
    audit_record(tenant_id=membership.tenant_id, actor=actor, action="membership.role_change",
                 target_type="membership", target_id=membership.pk,
                 payload={"user_id": membership.user_id, "from": previous, "to": role})
    sockets_close_for_user(membership.user_id, "role changed")  # they reconnect with the new role
    return membership


@transaction.atomic
def membership_set_active(*, membership: Membership, active: bool, actor: Actor) -> Membership:
    if membership.is_active == active:
        return membership
    if not active and membership.user_id == actor.user_id:
        raise MembershipError("You cannot deactivate yourself.")
    if not active and membership.role == Role.OWNER and _owners_left(membership) == 0:
        raise MembershipError("The tenant needs at least one active owner.")
    membership.is_active = active
    membership.save(update_fields=["is_active"])
    audit_record(tenant_id=membership.tenant_id, actor=actor,
                 action="membership.activate" if active else "membership.deactivate",
                 target_type="membership", target_id=membership.pk, payload={"user_id": membership.user_id})
    if not active:
        sockets_close_for_user(membership.user_id, "deactivated")
    return membership


SETTINGS_FIELDS = ("quota_messages_per_user_day", "quota_tokens_per_month")
RETENTION_FIELD = "audit_retention_days"


class SettingsError(ValueError):
    """A settings change that is not allowed; the message says why, for the owner."""


@transaction.atomic
def tenant_settings_update(*, tenant: Tenant, values: dict[str, int], actor: Actor) -> Tenant:
    """The console's settings form: retention and quotas, and the sensitivity flag, which is
    audited as its own event (compliance looks for it, not for a quota change).

    The audit retention is not a tenant field: it lives where the application cannot shorten it
    (audit.models.AuditRetention), and an owner may only lengthen it. A refused change fails the
    whole form, so nothing is half-applied.
    """
    changes: dict[str, list[int]] = {}
    if RETENTION_FIELD in values:
        current, wanted = retention_days(tenant.pk), values[RETENTION_FIELD]
        if wanted != current:
            try:
                changes[RETENTION_FIELD] = [current, audit_retention_lengthen(chain=tenant.pk, days=wanted)]
            except RetentionError as exc:
                raise SettingsError(str(exc)) from None
    if "sensitive" in values:
        tenant_set_sensitive(tenant=tenant, sensitive=bool(values["sensitive"]), actor=actor)
    quotas = {name: [getattr(tenant, name), values[name]] for name in SETTINGS_FIELDS
              if name in values and getattr(tenant, name) != values[name]}
    for name, (_, new) in quotas.items():
        setattr(tenant, name, new)
    if quotas:
        tenant.save(update_fields=list(quotas))
    changes |= quotas
    if not changes:
        return tenant
    audit_record(tenant_id=tenant.pk, actor=actor, action="tenant.settings_update", target_type="tenant",
                 target_id=tenant.pk, payload={"changes": changes})
    return tenant


@transaction.atomic
def tenant_set_sensitive(*, tenant: Tenant, sensitive: bool, actor: Actor) -> Tenant:
    """Marks a tenant sensitive: from its next turn on, only the local model answers it."""
    if tenant.sensitive == sensitive:
        return tenant
    tenant.sensitive = sensitive
    tenant.save(update_fields=["sensitive"])
    audit_record(tenant_id=tenant.pk, actor=actor, action="tenant.sensitivity_change", target_type="tenant",
                 target_id=tenant.pk, payload={"sensitive": sensitive})
    return tenant
