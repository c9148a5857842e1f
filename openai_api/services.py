"""API keys (create, revoke) and one chat completion asked through the OpenAI-compatible API."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from audit.services import Actor, audit_record
from chat.models import Conversation, Message
from chat.services import conversation_create, conversation_set_knowledge_bases, message_submit
from knowledge.selectors import knowledge_base_ids_allowed
from openai_api import wire
from openai_api.access import KEY_PREFIX, ApiCaller, key_hash
from openai_api.models import ApiKey
from tenants.models import Membership, Tenant


class ApiKeyError(ValueError):
    """A key that cannot be created as asked; the message says why, for the owner."""


@dataclass(frozen=True)
class CreatedApiKey:
    key: ApiKey
    # Shown once, on the page that created it; only its hash is stored.
    plaintext: str


@transaction.atomic
def api_key_create(*, tenant: Tenant, name: str, user: User, created_by: User | None,
                   actor: Actor) -> CreatedApiKey:
    name = " ".join(name.split())[:100]
    if not name:
        raise ApiKeyError("Give the key a name, so you can tell it apart later.")
    if not user.is_active or not Membership.objects.filter(tenant=tenant, user=user, is_active=True).exists():
        raise ApiKeyError(f"{user.get_username()} is not an active member of {tenant.name}.")
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(tenant=tenant, name=name, prefix=plaintext[:12], key_hash=key_hash(plaintext),
                                user=user, created_by=created_by)
    audit_record(
        tenant_id=tenant.pk, actor=actor, action="api_key.create", target_type="api_key", target_id=key.pk,
        payload={"name": name, "prefix": key.prefix, "user_id": user.pk, "username": user.get_username()},
    )
    return CreatedApiKey(key=key, plaintext=plaintext)


@transaction.atomic
def api_key_revoke(*, key: ApiKey, actor: Actor) -> ApiKey:
    """Revokes the key at once: its next request gets 401. Revoking a revoked key changes nothing."""
    if key.is_revoked:
        return key
    key.revoked_at = timezone.now()
    key.save(update_fields=["revoked_at"])
    audit_record(
        tenant_id=key.tenant_id, actor=actor, action="api_key.revoke", target_type="api_key", target_id=key.pk,
        payload={"name": key.name, "prefix": key.prefix, "user_id": key.user_id},
    )
    return key


def knowledge_base_for_model(caller: ApiCaller, model: str) -> int | None:
    """The knowledge base a model id answers from, if the key's user may use it; else 404."""
    knowledge_base_id = wire.knowledge_base_id_of(model)
    if knowledge_base_id is not None and not knowledge_base_ids_allowed(caller.membership, [knowledge_base_id]):
        raise wire.model_not_found(model)
    return knowledge_base_id


@transaction.atomic
def chat_completion_submit(*, caller: ApiCaller, request: wire.CompletionRequest, actor: Actor) -> Message:
    """Stores one API request as a turn of its own conversation and queues it, as the chat page does.

    The same services run as for a browser turn, so the same quotas (a request counts as one
    message, its answer's tokens count for the month), audit events and GPU task apply. The
    request's whole message list and sampling go on the pending reply; the worker uses them.
    """
    knowledge_base_id = knowledge_base_for_model(caller, request.model)
    membership = caller.membership
    conversation = conversation_create(user=membership.user, tenant=membership.tenant, actor=actor,
                                       source=Conversation.Source.API)
    if knowledge_base_id is not None:
        conversation_set_knowledge_bases(conversation=conversation, knowledge_base_ids=[knowledge_base_id],
                                         membership=membership, actor=actor)
    _, reply = message_submit(conversation=conversation, text=request.question, actor=actor)
    reply.request = {"messages": request.messages, "sampling": request.sampling, "model": request.model,
                     "api_key_id": caller.key.pk}
    reply.save(update_fields=["request"])
    return reply
