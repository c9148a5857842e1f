from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from audit.services import actor_from_request
from chat import services
from chat.models import Conversation
from chat.selectors import (
    conversation_get_for_user,
    conversation_knowledge_base_ids,
    conversation_list,
    message_list,
)
from knowledge.selectors import knowledge_bases_for_member
from tenants.decorators import tenant_required
from tenants.http import TenantRequest


@require_GET
@login_required
@tenant_required
def home(request: TenantRequest) -> HttpResponse:
    latest = conversation_list(user=request.user, tenant=request.tenant).first()
    if latest is not None:
        return redirect("chat:conversation_detail", conversation_id=latest.pk)
    return render(request, "chat/conversation.html", {"conversation": None, "chat_messages": [],
                                                      "conversations": []})


@require_POST
@login_required
@tenant_required
def conversation_create(request: TenantRequest) -> HttpResponse:
    conversation = services.conversation_create(
        user=request.user, tenant=request.tenant, actor=actor_from_request(request)
    )
    return redirect("chat:conversation_detail", conversation_id=conversation.pk)


@require_GET
@login_required
@tenant_required
def conversation_detail(request: TenantRequest, conversation_id: int) -> HttpResponse:
    conversation = conversation_get_for_user(request.user, request.tenant, conversation_id)
    return render(
        request,
        "chat/conversation.html",
        {
            "conversation": conversation,
            "chat_messages": message_list(conversation=conversation),
            "conversations": conversation_list(user=request.user, tenant=request.tenant),
            "max_chars": settings.CHAT_MAX_MESSAGE_CHARS,
            **_knowledge_context(request, conversation),
        },
    )


def _knowledge_context(request: TenantRequest, conversation: Conversation) -> dict[str, Any]:
    """The chooser's rows: each knowledge base the member may use, checked if the conversation uses it."""
    chosen = conversation_knowledge_base_ids(conversation=conversation)
    usable = knowledge_bases_for_member(request.membership)
    return {"knowledge_choices": [(kb, kb.pk in chosen) for kb in usable]}


def _int_list(values: list[str]) -> list[int]:
    return [int(v) for v in values if v.strip().isdigit()]


@require_POST
@login_required
@tenant_required
def conversation_set_knowledge_bases(request: TenantRequest, conversation_id: int) -> HttpResponse:
    conversation = conversation_get_for_user(request.user, request.tenant, conversation_id)
    services.conversation_set_knowledge_bases(
        conversation=conversation, knowledge_base_ids=_int_list(request.POST.getlist("knowledge_base")),
        membership=request.membership, actor=actor_from_request(request),
    )
    if request.htmx:
        context = {"conversation": conversation, "knowledge_saved": True,
                   **_knowledge_context(request, conversation)}
        return render(request, "chat/conversation.html#knowledge_chooser", context)
    return redirect("chat:conversation_detail", conversation_id=conversation.pk)


@require_POST
@login_required
@tenant_required
def conversation_rename(request: TenantRequest, conversation_id: int) -> HttpResponse:
    conversation = conversation_get_for_user(request.user, request.tenant, conversation_id)
    error = ""
    try:
        services.conversation_rename(
            conversation=conversation, title=request.POST.get("title", ""), actor=actor_from_request(request)
        )
    except services.ChatInputError as exc:
        error = str(exc)
    context = {"item": conversation, "conversation": conversation, "rename_error": error}
    if request.htmx:
        return render(request, "chat/conversation.html#conversation_item", context, status=400 if error else 200)
    return redirect("chat:conversation_detail", conversation_id=conversation.pk)


@require_POST
@login_required
@tenant_required
def conversation_delete(request: TenantRequest, conversation_id: int) -> HttpResponse:
    conversation = conversation_get_for_user(request.user, request.tenant, conversation_id)
    services.conversation_delete(conversation=conversation, actor=actor_from_request(request))
    if request.htmx:
        return HttpResponseClientRedirect(reverse("chat:home"))
    return redirect("chat:home")
