from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.db.models import QuerySet
from django.http import HttpRequest

from audit.admin_audit import AuditedModelAdmin
from tenants.models import Membership, Tenant
from tenants.rls import tenant_context


class TenantScopedAdmin(AuditedModelAdmin):
    """Owners see and edit only their active tenant's rows; platform superusers see all."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        qs = super().get_queryset(request)
        if request.user.is_superuser:
            return qs
        return qs.filter(tenant=getattr(request, "tenant", None))

    def get_exclude(self, request: HttpRequest, obj: Any = None) -> Any:
        exclude = list(super().get_exclude(request, obj) or [])
        return exclude if request.user.is_superuser else [*exclude, "tenant"]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if not request.user.is_superuser:
            obj.tenant = request.tenant  # type: ignore[attr-defined]
        # A platform operator acts outside any tenant: write in the object's own tenant context.
        with tenant_context(obj.tenant_id):
            super().save_model(request, obj, form, change)


@admin.register(Tenant)
class TenantAdmin(AuditedModelAdmin):
    list_display = ["name", "slug", "created_at"]

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser


@admin.register(Membership)
class MembershipAdmin(TenantScopedAdmin):
    list_display = ["user", "role", "is_active", "created_at"]
    list_filter = ["role", "is_active"]

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        # User accounts are installation-wide: an owner may pick only their own tenant's members
        # (new people are added in the owner's console), never browse other tenants' user names.
        if db_field.name == "user" and not request.user.is_superuser:
            kwargs["queryset"] = User.objects.filter(memberships__tenant=getattr(request, "tenant", None))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        active: Tenant | None = getattr(request, "tenant", None)
        if request.user.is_superuser or active is None:
            return form  # the tenant is a field of the form: Django checks (tenant, user) itself
        tenant = active

        class OwnerMembershipForm(form):  # type: ignore[misc, valid-type]  # a class made by modelform_factory
            def clean(self) -> dict[str, Any]:
                # An owner's form has no tenant field (get_exclude), so Django skips the (tenant, user)
                # constraint, and a second membership of one member failed as a 500 at the insert.
                cleaned: dict[str, Any] = super().clean()
                user = cleaned.get("user")
                if user is not None and Membership.objects.filter(tenant=tenant, user=user).exclude(
                        pk=self.instance.pk).exists():
                    self.add_error("user", f"{user.get_username()} is already a member of {tenant.name}.")
                return cleaned

        return OwnerMembershipForm


# Django's own user and group admins, re-registered so their changes are audited too.
admin.site.unregister(User)
admin.site.unregister(Group)


if TYPE_CHECKING:
    # django-stubs makes UserAdmin generic; Django's own class is not subscriptable at run time.
    _UserAdmin = UserAdmin[User]
else:
    _UserAdmin = UserAdmin


@admin.register(User)
class AuditedUserAdmin(AuditedModelAdmin, _UserAdmin):
    pass


@admin.register(Group)
class AuditedGroupAdmin(AuditedModelAdmin, GroupAdmin):
    pass


def _audit_axes_admins() -> None:
    """django-axes' lockout records: unlocking an account (deleting them) is a user change."""
    from axes.admin import AccessAttemptAdmin, AccessFailureLogAdmin, AccessLogAdmin
    from axes.models import AccessAttempt, AccessFailureLog, AccessLog

    for model, base in ((AccessAttempt, AccessAttemptAdmin), (AccessLog, AccessLogAdmin),
                        (AccessFailureLog, AccessFailureLogAdmin)):
        if admin.site.is_registered(model):
            admin.site.unregister(model)
            admin.site.register(model, type(f"Audited{base.__name__}", (AuditedModelAdmin, base), {}))


_audit_axes_admins()
