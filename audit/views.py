from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from audit.catalogue import CATALOGUE
from audit.chain import verify_chain
from audit.export import stream_csv, stream_jsonl
from audit.forms import AuditFilterForm
from audit.selectors import audit_event_get, audit_events
from audit.services import actor_from_request, audit_record
from tenants.decorators import role_required
from tenants.http import TenantRequest
from tenants.models import Role

PAGE_SIZE = 50


def _filters(request: TenantRequest) -> tuple[AuditFilterForm, dict[str, Any]]:
    form = AuditFilterForm(request.GET or None)
    if form.is_bound and form.is_valid():
        return form, {k: v for k, v in form.cleaned_data.items() if v not in (None, "")}
    return form, {}


def _for_log(filters: dict[str, Any]) -> dict[str, str]:
    return {k: v.isoformat() if hasattr(v, "isoformat") else str(v) for k, v in filters.items()}


@require_GET
@login_required
@role_required(Role.COMPLIANCE)
def event_list(request: TenantRequest) -> HttpResponse:
    form, filters = _filters(request)
    page = Paginator(audit_events(tenant=request.tenant, filters=filters), PAGE_SIZE).get_page(request.GET.get("page"))
    # Read the page before recording this view, so the count and the rows describe the same trail.
    page.object_list = list(page.object_list)
    audit_record(
        tenant_id=request.tenant.pk, actor=actor_from_request(request), action="audit.view",
        target_type="audit_trail", payload={"filters": _for_log(filters), "page": page.number},
    )
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form, "page": page, "chain": verify_chain(request.tenant.pk),
        "query": query, "actions": sorted(CATALOGUE),
    }
    template = "audit/trail.html#results" if request.htmx and not request.htmx.boosted else "audit/trail.html"
    return render(request, template, context)


@require_GET
@login_required
@role_required(Role.COMPLIANCE)
def event_detail(request: TenantRequest, event_id: int) -> HttpResponse:
    event = audit_event_get(tenant=request.tenant, event_id=event_id)
    audit_record(
        tenant_id=request.tenant.pk, actor=actor_from_request(request), action="audit.view",
        target_type="audit_event", target_id=event.pk,
    )
    return render(request, "audit/event.html", {"event": event})


@require_GET
@login_required
@role_required(Role.COMPLIANCE)
def event_export(request: TenantRequest, fmt: str) -> HttpResponseBase:
    if fmt not in ("jsonl", "csv"):
        raise Http404("Unknown export format.")
    form, filters = _filters(request)
    if form.is_bound and not form.is_valid():
        return HttpResponse(f"Invalid filter: {form.errors.as_text()}", status=400, content_type="text/plain")
    # Recorded before the first byte: the export itself is part of the trail it exports.
    audit_record(
        tenant_id=request.tenant.pk, actor=actor_from_request(request), action="audit.export",
        target_type="audit_trail", payload={"filters": _for_log(filters), "format": fmt},
    )
    events = audit_events(tenant=request.tenant, filters=filters)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    if fmt == "jsonl":
        response = StreamingHttpResponse(stream_jsonl(events, request.tenant.pk), content_type="application/x-ndjson")
    else:
        response = StreamingHttpResponse(stream_csv(events, request.tenant.pk), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="audit-{request.tenant.slug}-{stamp}.{fmt}"'
    return response
