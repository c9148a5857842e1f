"""Reads about knowledge bases: who may use which, and the lookups views need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    """The knowledge bases this member may chat with: by role, or listed by name.

    Always a subset of `knowledge_bases_visible_to`: what the chat picker, retrieval, citations and
    the /v1 models offer."""
    return (
        KnowledgeBase.objects.filter(tenant_id=membership.tenant_id)
        .filter(Q(access_roles__contains=[membership.role]) | Q(members__user_id=membership.user_id))
        .distinct()
        .order_by("name")
    )


def knowledge_bases_visible_to(membership: Membership) -> QuerySet[KnowledgeBase]:
    """The one rule for whether a member sees a knowledge base at all, by name: every page, API and
    lookup of knowledge bases, their documents, passages and sources goes through it.

    Managers (knowledge admins, owners) see every knowledge base of the tenant except the private
    ones (no role may use them) that neither list them nor were created by them: private means
    private from the other managers too. Everyone else sees what they may chat with.
    """
    if membership.role not in MANAGERS:
        return knowledge_bases_for_member(membership)
    return (
        KnowledgeBase.objects.filter(tenant_id=membership.tenant_id)
        .filter(~Q(access_roles=[]) | Q(members__user_id=membership.user_id) | Q(created_by_id=membership.user_id))
        .distinct()
        .order_by("name")
    )


def _visible_ids(membership: Membership) -> QuerySet[KnowledgeBase, Any]:
    return knowledge_bases_visible_to(membership).values("pk")


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
    """A knowledge base this member sees (views check the manager role); 404 otherwise."""
    try:
        return KnowledgeBase.objects.get(tenant_id=membership.tenant_id, pk=knowledge_base_id,
                                         pk__in=_visible_ids(membership))
    except KnowledgeBase.DoesNotExist:
        raise Http404("No such knowledge base.") from None


def document_get_for_manager(membership: Membership, document_id: int) -> Document:
    """A document of a knowledge base this member sees (views check the manager role); 404 otherwise."""
    try:
        return Document.objects.select_related("knowledge_base").get(
            tenant_id=membership.tenant_id, pk=document_id, knowledge_base_id__in=_visible_ids(membership))
    except Document.DoesNotExist:
        raise Http404("No such document.") from None


def document_get_for_reader(membership: Membership, document_id: int) -> Document:
    """A document whose knowledge base this member sees (citations link here): for readers, one they
    may chat with; for managers, one they manage."""
    return document_get_for_manager(membership, document_id)


def source_get_for_manager(membership: Membership, source_id: int) -> KnowledgeSource:
    try:
        return KnowledgeSource.objects.select_related("knowledge_base").get(
            tenant_id=membership.tenant_id, pk=source_id, knowledge_base_id__in=_visible_ids(membership))
    except KnowledgeSource.DoesNotExist:
        raise Http404("No such source.") from None
