"""Knowledge base writes: create, change settings and access, mark sensitive, delete; the demo seed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from django.contrib.auth.models import User
from django.db import transaction

from audit.services import SYSTEM, Actor, audit_record
from knowledge import storage
from knowledge.models import Chunk, Document, KnowledgeBase, KnowledgeBaseMember
from knowledge.services import KnowledgeInputError
from knowledge.services.documents import document_put
from tenants.models import Membership, Role, Tenant
from tenants.rls import tenant_context

# The demo tenant's handbook, shipped with the app.
DEMO_HANDBOOK = Path(__file__).resolve().parent.parent / "demo" / "handbook.md"


def _access_roles_validated(roles: Iterable[str]) -> list[str]:
    valid = {r.value for r in Role}
    chosen = sorted(set(roles))
    unknown = [r for r in chosen if r not in valid]
    if unknown:
        raise KnowledgeInputError(f"Unknown role: {', '.join(unknown)}.")
    return chosen


def _chunk_sizes_check(max_tokens: int, overlap: int) -> None:
    if not 32 <= max_tokens <= 2048:
        raise KnowledgeInputError("Chunk size must be between 32 and 2048 tokens.")
    if not 0 <= overlap < max_tokens // 2:
        raise KnowledgeInputError("Overlap must be at least 0 and less than half the chunk size.")


def _knowledge_base_members_replace(knowledge_base: KnowledgeBase, user_ids: Sequence[int]) -> None:
    valid = set(Membership.objects.filter(tenant_id=knowledge_base.tenant_id, user_id__in=list(user_ids))
                .values_list("user_id", flat=True))
    if set(user_ids) - valid:
        raise KnowledgeInputError("Only members of this organisation can be given access.")
    KnowledgeBaseMember.objects.filter(knowledge_base=knowledge_base).exclude(user_id__in=valid).delete()
    existing = set(KnowledgeBaseMember.objects.filter(knowledge_base=knowledge_base).values_list("user_id", flat=True))
    KnowledgeBaseMember.objects.bulk_create(
        KnowledgeBaseMember(tenant_id=knowledge_base.tenant_id, knowledge_base=knowledge_base, user_id=uid)
        for uid in sorted(valid - existing)
    )


def _knowledge_base_fields_validated(tenant_id: int, name: str, roles: Iterable[str], chunk_max_tokens: int,
                                     chunk_overlap_tokens: int, *,
                                     exclude_pk: int | None = None) -> tuple[str, list[str]]:
    """The cleaned name and roles of a knowledge base being created or changed, or the reason not."""
    name = " ".join(name.split())[:200]
    if not name:
        raise KnowledgeInputError("A knowledge base needs a name.")
    _chunk_sizes_check(chunk_max_tokens, chunk_overlap_tokens)
    cleaned_roles = _access_roles_validated(roles)
    same_name = KnowledgeBase.objects.filter(tenant_id=tenant_id, name=name)
    if exclude_pk is not None:
        same_name = same_name.exclude(pk=exclude_pk)
    if same_name.exists():
        raise KnowledgeInputError(f"A knowledge base named “{name}” already exists.")
    return name, cleaned_roles


@transaction.atomic
def knowledge_base_create(*, tenant: Tenant, name: str, description: str = "", access_roles: Iterable[str] | None = None,
                          member_ids: Sequence[int] = (), chunk_max_tokens: int = 256, chunk_overlap_tokens: int = 32,
                          sensitive: bool = False, created_by: User | None = None, actor: Actor) -> KnowledgeBase:
    requested_roles = access_roles if access_roles is not None else [r.value for r in Role]
    name, roles = _knowledge_base_fields_validated(tenant.pk, name, requested_roles, chunk_max_tokens,
                                                   chunk_overlap_tokens)
    knowledge_base = KnowledgeBase.objects.create(
        tenant=tenant, name=name, description=description.strip(), access_roles=roles,
        chunk_max_tokens=chunk_max_tokens, chunk_overlap_tokens=chunk_overlap_tokens, sensitive=sensitive,
        created_by=created_by,
    )
    _knowledge_base_members_replace(knowledge_base, member_ids)
    audit_record(tenant_id=tenant.pk, actor=actor, action="knowledge_base.create", target_type="knowledge_base",
                 target_id=knowledge_base.pk, payload={"name": name, "access_roles": roles,
                                                       "member_ids": sorted(member_ids), "sensitive": sensitive})
    return knowledge_base


@transaction.atomic
def knowledge_base_update(*, knowledge_base: KnowledgeBase, name: str, description: str, access_roles: Iterable[str],
                          member_ids: Sequence[int], chunk_max_tokens: int, chunk_overlap_tokens: int,
                          sensitive: bool | None = None, actor: Actor) -> KnowledgeBase:
    """Changes a knowledge base's settings; `sensitive` None leaves that flag as it is."""
    name, roles = _knowledge_base_fields_validated(knowledge_base.tenant_id, name, access_roles, chunk_max_tokens,
                                                   chunk_overlap_tokens, exclude_pk=knowledge_base.pk)
    if sensitive is not None:
        knowledge_base_set_sensitive(knowledge_base=knowledge_base, sensitive=sensitive, actor=actor)
    knowledge_base.name, knowledge_base.description, knowledge_base.access_roles = name, description.strip(), roles
    knowledge_base.chunk_max_tokens, knowledge_base.chunk_overlap_tokens = chunk_max_tokens, chunk_overlap_tokens
    knowledge_base.save(update_fields=["name", "description", "access_roles", "chunk_max_tokens",
                                       "chunk_overlap_tokens", "updated_at"])
    _knowledge_base_members_replace(knowledge_base, member_ids)
    audit_record(tenant_id=knowledge_base.tenant_id, actor=actor, action="knowledge_base.update",
                 target_type="knowledge_base", target_id=knowledge_base.pk,
                 payload={"name": name, "access_roles": roles, "member_ids": sorted(member_ids),
                          "chunk_max_tokens": chunk_max_tokens, "chunk_overlap_tokens": chunk_overlap_tokens})
    return knowledge_base


@transaction.atomic
def knowledge_base_set_sensitive(*, knowledge_base: KnowledgeBase, sensitive: bool, actor: Actor) -> KnowledgeBase:
    """Marks a knowledge base sensitive: from the next turn on, a conversation that uses it (or
    cited it earlier) is answered only by the local model. Its own event, so compliance can find
    every time data was allowed to leave the installation."""
    if knowledge_base.sensitive == sensitive:
        return knowledge_base
    knowledge_base.sensitive = sensitive
    knowledge_base.save(update_fields=["sensitive", "updated_at"])
    audit_record(tenant_id=knowledge_base.tenant_id, actor=actor, action="knowledge_base.sensitivity_change",
                 target_type="knowledge_base", target_id=knowledge_base.pk,
                 payload={"name": knowledge_base.name, "sensitive": sensitive})
    return knowledge_base


@transaction.atomic
def knowledge_base_delete(*, knowledge_base: KnowledgeBase, actor: Actor) -> None:
    stored = list(Document.objects.filter(knowledge_base=knowledge_base).values_list("stored_name", flat=True))
    audit_record(tenant_id=knowledge_base.tenant_id, actor=actor, action="knowledge_base.delete",
                 target_type="knowledge_base", target_id=knowledge_base.pk,
                 payload={"name": knowledge_base.name, "documents": len(stored)})
    Chunk.objects.filter(knowledge_base=knowledge_base).delete()
    knowledge_base.delete()

    def remove_files() -> None:
        for name in stored:
            storage.delete(name)

    transaction.on_commit(remove_files)


def demo_knowledge_seed(*, tenant: Tenant, uploaded_by: User | None = None) -> KnowledgeBase | None:
    """The demo tenant's "Demo handbook", so a first chat can cite something. Idempotent."""
    with tenant_context(tenant.pk):
        if KnowledgeBase.objects.filter(tenant=tenant, name="Demo handbook").exists():
            return None
        knowledge_base = knowledge_base_create(
            tenant=tenant, name="Demo handbook", description="Working hours, leave, travel and IT rules.",
            created_by=uploaded_by, actor=SYSTEM)
    document_put(knowledge_base=knowledge_base, name="handbook.md", pieces=[DEMO_HANDBOOK.read_bytes()],
                 uploaded_by=uploaded_by, actor=SYSTEM)
    return knowledge_base
