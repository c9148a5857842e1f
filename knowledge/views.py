"""Knowledge admin pages: knowledge bases, uploads with live progress, sources; and the document
viewer that citations link to.

Each view is named as its URL (knowledge/urls.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from audit.services import actor_from_request, audit_record
from knowledge.forms import KnowledgeBaseForm, SourceForm
from knowledge.models import KnowledgeBase
from knowledge.selectors import (
    MANAGERS,
    chunks_of_document,
    document_get_for_manager,
    document_get_for_reader,
    documents_of_knowledge_base,
    knowledge_base_get_for_manager,
    knowledge_base_member_ids,
    knowledge_bases_visible_to,
    source_get_for_manager,
    sources_of_knowledge_base,
)
from knowledge.services import KnowledgeInputError, sources
from knowledge.services import documents as document_services
from knowledge.services import knowledge_bases as knowledge_base_services
from knowledge.services.documents import UploadOutcome
from tenants.decorators import role_required, tenant_required
from tenants.http import TenantRequest


def _knowledge_base_form_fields(form: KnowledgeBaseForm) -> dict[str, object]:
    data = form.cleaned_data
    return {"name": data["name"], "description": data["description"], "access_roles": data["access_roles"],
            "member_ids": data["member_ids"], "chunk_max_tokens": data["chunk_max_tokens"],
            "chunk_overlap_tokens": data["chunk_overlap_tokens"], "sensitive": data["sensitive"]}


def _knowledge_base_list_page(request: TenantRequest, form: KnowledgeBaseForm | None = None,
                              status: int = 200) -> HttpResponse:
    knowledge_bases = knowledge_bases_visible_to(request.membership)
    return render(request, "knowledge/list.html", {
        "knowledge_bases": knowledge_bases, "form": form or KnowledgeBaseForm(tenant=request.tenant),
    }, status=status)


@require_GET
@login_required
@role_required(*MANAGERS)
def knowledge_base_list(request: TenantRequest) -> HttpResponse:
    return _knowledge_base_list_page(request)


@require_POST
@login_required
@role_required(*MANAGERS)
def knowledge_base_create(request: TenantRequest) -> HttpResponse:
    form = KnowledgeBaseForm(request.POST, tenant=request.tenant)
    if not form.is_valid():
        return _knowledge_base_list_page(request, form=form, status=400)
    try:
        knowledge_base = knowledge_base_services.knowledge_base_create(tenant=request.tenant, created_by=request.user,
                                                        actor=actor_from_request(request), **_knowledge_base_form_fields(form))  # type: ignore[arg-type]
    except KnowledgeInputError as exc:
        form.add_error(None, str(exc))
        return _knowledge_base_list_page(request, form=form, status=400)
    return redirect("knowledge:knowledge_base_detail", knowledge_base_id=knowledge_base.pk)


def _knowledge_base_detail_page(request: TenantRequest, knowledge_base: KnowledgeBase, *,
                                form: KnowledgeBaseForm | None = None, source_form: SourceForm | None = None,
                                outcomes: Sequence[UploadOutcome] | None = None, error: str = "",
                                status: int = 200) -> HttpResponse:
    form = form or KnowledgeBaseForm(tenant=request.tenant, initial={
        "name": knowledge_base.name, "description": knowledge_base.description,
        "access_roles": knowledge_base.access_roles,
        "member_ids": knowledge_base_member_ids(knowledge_base),
        "chunk_max_tokens": knowledge_base.chunk_max_tokens, "chunk_overlap_tokens": knowledge_base.chunk_overlap_tokens,
        "sensitive": knowledge_base.sensitive,
    })
    return render(request, "knowledge/detail.html", {
        **_documents_context(knowledge_base), "form": form, "source_form": source_form or SourceForm(),
        "sources": sources_of_knowledge_base(knowledge_base),
        "outcomes": outcomes or [], "error": error,
    }, status=status)


def _documents_context(knowledge_base: KnowledgeBase) -> dict[str, object]:
    documents = documents_of_knowledge_base(knowledge_base)
    return {"knowledge_base": knowledge_base, "documents": documents,
            "any_in_progress": any(d.in_progress for d in documents)}


@require_GET
@login_required
@role_required(*MANAGERS)
def knowledge_base_detail(request: TenantRequest, knowledge_base_id: int) -> HttpResponse:
    knowledge_base = knowledge_base_get_for_manager(request.membership, knowledge_base_id)
    return _knowledge_base_detail_page(request, knowledge_base)


@require_POST
@login_required
@role_required(*MANAGERS)
def knowledge_base_update(request: TenantRequest, knowledge_base_id: int) -> HttpResponse:
    knowledge_base = knowledge_base_get_for_manager(request.membership, knowledge_base_id)
    form = KnowledgeBaseForm(request.POST, tenant=request.tenant)
    if not form.is_valid():
        return _knowledge_base_detail_page(request, knowledge_base, form=form, status=400)
    try:
        knowledge_base_services.knowledge_base_update(knowledge_base=knowledge_base, actor=actor_from_request(request),
                                       **_knowledge_base_form_fields(form))  # type: ignore[arg-type]
    except KnowledgeInputError as exc:
        form.add_error(None, str(exc))
        return _knowledge_base_detail_page(request, knowledge_base, form=form, status=400)
    return redirect("knowledge:knowledge_base_detail", knowledge_base_id=knowledge_base.pk)


@require_POST
@login_required
@role_required(*MANAGERS)
def knowledge_base_delete(request: TenantRequest, knowledge_base_id: int) -> HttpResponse:
    knowledge_base = knowledge_base_get_for_manager(request.membership, knowledge_base_id)
    knowledge_base_services.knowledge_base_delete(knowledge_base=knowledge_base, actor=actor_from_request(request))
    return redirect("knowledge:knowledge_base_list")


@require_POST
@login_required
@role_required(*MANAGERS)
def document_upload(request: TenantRequest, knowledge_base_id: int) -> HttpResponse:
    """Several files at once; each is stored and queued on its own, or refused with its reason."""
    knowledge_base = knowledge_base_get_for_manager(request.membership, knowledge_base_id)
    files = request.FILES.getlist("files")
    if not files:
        return _knowledge_base_detail_page(request, knowledge_base, error="Choose one or more files to upload.", status=400)
    outcomes = document_services.documents_upload(knowledge_base=knowledge_base, files=files, uploaded_by=request.user,
                                         actor=actor_from_request(request))
    if request.htmx:
        return render(request, "knowledge/detail.html#documents",
                      {**_documents_context(knowledge_base), "outcomes": outcomes})
    return _knowledge_base_detail_page(request, knowledge_base, outcomes=outcomes)


@require_GET
@login_required
@role_required(*MANAGERS)
def document_list(request: TenantRequest, knowledge_base_id: int) -> HttpResponse:
    """The documents table alone: the page polls it while anything is in progress."""
    knowledge_base = knowledge_base_get_for_manager(request.membership, knowledge_base_id)
    return render(request, "knowledge/detail.html#documents", _documents_context(knowledge_base))


@require_POST
@login_required
@role_required(*MANAGERS)
def document_delete(request: TenantRequest, document_id: int) -> HttpResponse:
    document = document_get_for_manager(request.membership, document_id)
    knowledge_base_id = document.knowledge_base_id
    document_services.document_delete(document=document, actor=actor_from_request(request))
    return redirect("knowledge:knowledge_base_detail", knowledge_base_id=knowledge_base_id)


@require_POST
@login_required
@role_required(*MANAGERS)
def document_retry(request: TenantRequest, document_id: int) -> HttpResponse:
    document = document_get_for_manager(request.membership, document_id)
    try:
        document_services.document_retry(document=document, actor=actor_from_request(request))
    except KnowledgeInputError as exc:
        return _knowledge_base_detail_page(request, document.knowledge_base, error=str(exc), status=400)
    return redirect("knowledge:knowledge_base_detail", knowledge_base_id=document.knowledge_base_id)


@require_POST
@login_required
@role_required(*MANAGERS)
def source_create(request: TenantRequest, knowledge_base_id: int) -> HttpResponse:
    knowledge_base = knowledge_base_get_for_manager(request.membership, knowledge_base_id)
    form = SourceForm(request.POST)
    if not form.is_valid():
        return _knowledge_base_detail_page(request, knowledge_base, source_form=form, status=400)
    try:
        sources.source_create(knowledge_base=knowledge_base, actor=actor_from_request(request), **form.cleaned_data)
    except KnowledgeInputError as exc:
        form.add_error(None, str(exc))
        return _knowledge_base_detail_page(request, knowledge_base, source_form=form, status=400)
    return redirect("knowledge:knowledge_base_detail", knowledge_base_id=knowledge_base.pk)


@require_POST
@login_required
@role_required(*MANAGERS)
def source_delete(request: TenantRequest, source_id: int) -> HttpResponse:
    source = source_get_for_manager(request.membership, source_id)
    knowledge_base_id = source.knowledge_base_id
    sources.source_delete(source=source, actor=actor_from_request(request))
    return redirect("knowledge:knowledge_base_detail", knowledge_base_id=knowledge_base_id)


@require_POST
@login_required
@role_required(*MANAGERS)
def source_sync(request: TenantRequest, source_id: int) -> HttpResponse:
    """Queues a re-sync now; the sync itself records `source.sync` when it runs."""
    source = source_get_for_manager(request.membership, source_id)
    sources.source_sync_request(source=source)
    return redirect("knowledge:knowledge_base_detail", knowledge_base_id=source.knowledge_base_id)


@require_GET
@login_required
@tenant_required
def document_detail(request: TenantRequest, document_id: int) -> HttpResponse:
    """A document's passages, the cited one highlighted. Readers need access to its knowledge base."""
    document = document_get_for_reader(request.membership, document_id)
    chunks = chunks_of_document(document)
    try:
        highlighted = int(request.GET.get("chunk", ""))
    except ValueError:
        highlighted = None
    audit_record(tenant_id=request.tenant.pk, actor=actor_from_request(request), action="document.view",
                 target_type="document", target_id=document.pk,
                 payload={"chunk_id": highlighted} if highlighted else {})
    return render(request, "knowledge/document.html", {
        "document": document, "chunks": chunks, "highlighted": highlighted,
        "can_manage": request.membership.role in MANAGERS,
    })
