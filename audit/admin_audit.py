"""Every Django-admin change is audited in the same transaction as the change itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from audit.services import actor_from_request, audit_record


def _tenant_of(request: HttpRequest, obj: Model) -> int | None:
    tenant_id = getattr(obj, "tenant_id", None)
    if tenant_id is None and type(obj).__name__ == "Tenant":
        tenant_id = obj.pk
    if tenant_id is None:
        tenant = getattr(request, "tenant", None)
        tenant_id = tenant.pk if tenant is not None else None
    return tenant_id


def _target(obj: Model) -> str:
    return f"{obj._meta.app_label}.{obj._meta.model_name}"


if TYPE_CHECKING:
    # django-stubs makes ModelAdmin generic; Django's own class is not subscriptable at run time.
    _ModelAdmin = admin.ModelAdmin[Any]
else:
    _ModelAdmin = admin.ModelAdmin


class AuditedModelAdmin(_ModelAdmin):
    """Base of every ModelAdmin here; a test fails for a registered admin that is not one."""

    def log_addition(self, request: HttpRequest, obj: Model, message: Any) -> Any:
        audit_record(
            tenant_id=_tenant_of(request, obj), actor=actor_from_request(request), action="admin.add",
            target_type=_target(obj), target_id=obj.pk, payload={"repr": str(obj)[:200], "change": message},
        )
        return super().log_addition(request, obj, message)

    def log_change(self, request: HttpRequest, obj: Model, message: Any) -> Any:
        audit_record(
            tenant_id=_tenant_of(request, obj), actor=actor_from_request(request), action="admin.change",
            target_type=_target(obj), target_id=obj.pk, payload={"repr": str(obj)[:200], "change": message},
        )
        return super().log_change(request, obj, message)

    def log_deletions(self, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
        for obj in queryset:
            audit_record(
                tenant_id=_tenant_of(request, obj), actor=actor_from_request(request), action="admin.delete",
                target_type=_target(obj), target_id=obj.pk, payload={"repr": str(obj)[:200]},
            )
        return super().log_deletions(request, queryset)
