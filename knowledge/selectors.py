"""Reads about knowledge bases: who may use which, and the lookups views need."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db.models import Q, QuerySet
from django.http import Http404

from knowledge.models import Document, KnowledgeBase, KnowledgeSource
from tenants.models import Membership, Role

MANAGERS = (Role.KNOWLEDGE_ADMIN, Role.OWNER)


def embedding_model_id() -> str:
    """Names the embedding model in each chunk row: vectors of different models never mix."""
    path = settings.EMBEDDING_MODEL_PATH
    return Path(path).name if path else "all-MiniLM-L6-v2"


def knowledge_bases_for_member(membership: Membership) -> QuerySet[KnowledgeBase]:
    """The knowledge bases this member may chat with: by role, or listed by name."""
    return (
        KnowledgeBase.objects.filter(tenant_id=membership.tenant_id)
        .filter(Q(access_roles__contains=[membership.role]) | Q(members__user_id=membership.user_id))
        .distinct()
        .order_by("name")
    )


def knowledge_base_ids_allowed(membership: Membership, requested: list[int]) -> list[int]:
    return list(knowledge_bases_for_member(membership).filter(pk__in=requested).values_list("pk", flat=True))


def knowledge_base_get_for_manager(membership: Membership, knowledge_base_id: int) -> KnowledgeBase:
    try:
        return KnowledgeBase.objects.get(tenant_id=membership.tenant_id, pk=knowledge_base_id)
    except KnowledgeBase.DoesNotExist:
        raise Http404("No such knowledge base.") from None


def document_get_for_manager(membership: Membership, document_id: int) -> Document:
    try:
        return Document.objects.select_related("knowledge_base").get(tenant_id=membership.tenant_id, pk=document_id)
    except Document.DoesNotExist:
        raise Http404("No such document.") from None


def document_get_for_reader(membership: Membership, document_id: int) -> Document:
    """A document whose knowledge base this member may chat with (citations link here)."""
    allowed = knowledge_bases_for_member(membership).values("pk")
    if membership.role in MANAGERS:
        return document_get_for_manager(membership, document_id)
    try:
        return Document.objects.select_related("knowledge_base").get(
            tenant_id=membership.tenant_id, pk=document_id, knowledge_base_id__in=allowed)
    except Document.DoesNotExist:
        raise Http404("No such document.") from None


def source_get_for_manager(membership: Membership, source_id: int) -> KnowledgeSource:
    try:
        return KnowledgeSource.objects.select_related("knowledge_base").get(tenant_id=membership.tenant_id,
                                                                            pk=source_id)
    except KnowledgeSource.DoesNotExist:
        raise Http404("No such source.") from None
