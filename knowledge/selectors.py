"""Reads about knowledge bases: who may use which, and the lookups views need."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db.models import Q, QuerySet
from django.http import Http404

from knowledge.models import Chunk, Document, KnowledgeBase, KnowledgeSource
from tenants.models import Membership, Role, Tenant

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


def knowledge_bases_of_tenant(tenant_id: int) -> QuerySet[KnowledgeBase]:
    """All of a tenant's knowledge bases, by name: what its managers see."""
    return KnowledgeBase.objects.filter(tenant_id=tenant_id).order_by("name")


def knowledge_base_member_ids(knowledge_base: KnowledgeBase) -> list[int]:
    """The users given access to `knowledge_base` by name."""
    return list(knowledge_base.members.values_list("user_id", flat=True))


def knowledge_base_member_choices(tenant: Tenant) -> list[tuple[int, str]]:
    """(user id, username) of the tenant's active members, by username: who can be given access by name."""
    members = Membership.objects.filter(tenant=tenant, is_active=True).select_related("user").order_by("user__username")
    return [(m.user_id, m.user.username) for m in members]


def documents_of_knowledge_base(knowledge_base: KnowledgeBase) -> list[Document]:
    """A knowledge base's documents, newest first."""
    return list(Document.objects.filter(knowledge_base=knowledge_base).order_by("-created_at", "-id"))


def sources_of_knowledge_base(knowledge_base: KnowledgeBase) -> QuerySet[KnowledgeSource]:
    """A knowledge base's URL and folder sources, oldest first."""
    return KnowledgeSource.objects.filter(knowledge_base=knowledge_base).order_by("id")


def chunks_of_document(document: Document) -> list[Chunk]:
    """A document's passages in reading order, with only the fields the document viewer shows."""
    return list(Chunk.objects.filter(document=document).order_by("ordinal")
                .only("id", "ordinal", "heading", "text", "page"))


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
