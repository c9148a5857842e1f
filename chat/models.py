from __future__ import annotations

from django.conf import settings
from django.db import models

from knowledge.models import KnowledgeBase
from tenants.models import TenantOwned

DEFAULT_TITLE = "New chat"


class Conversation(TenantOwned):
    class Source(models.TextChoices):
        WEB = "web", "Chat page"
        API = "api", "OpenAI-compatible API"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, default=DEFAULT_TITLE)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # The knowledge bases this conversation answers from (the user must be allowed each one).
    knowledge_bases = models.ManyToManyField(KnowledgeBase, through="ConversationKnowledgeBase", blank=True,
                                             related_name="+")
    # API requests are stored as conversations too (one per request), so they take the same
    # path, quotas and audit as the chat page; the chat page's sidebar lists only its own.
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.WEB)

    class Meta:
        indexes = [models.Index(fields=["tenant", "user", "-updated_at"])]

    def __str__(self) -> str:
        return self.title


class Message(TenantOwned):
    class Role(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        STREAMING = "streaming", "Streaming"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINAL_STATUSES = (Status.DONE, Status.FAILED, Status.CANCELLED)

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DONE)
    error = models.TextField(blank=True)
    reply_to = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    # How many times a worker has started this turn; a redelivered turn is retried once.
    attempts = models.PositiveSmallIntegerField(default=0)
    # The backend that answered (inference.routing): "local:<model>" or a remote server's name.
    served_by = models.CharField(max_length=100, blank=True)
    token_count = models.PositiveIntegerField(default=0)
    timings = models.JSONField(default=dict, blank=True)
    citations = models.JSONField(default=list, blank=True)
    # A turn asked through the OpenAI-compatible API carries the request's own prompt and
    # sampling: {"messages": [{"role", "content"}...], "sampling": {"max_new_tokens", ...}}.
    # Empty for the chat page, whose prompt is the conversation's stored history.
    request = models.JSONField(default=dict, blank=True)
    # The id the browser gave its submit: a submit re-sent after a lost confirmation finds its
    # turn instead of asking twice (unique per conversation among user messages that carry one).
    client_id = models.CharField(max_length=64, blank=True)
    # The Celery worker (its hostname) that owns the turn while it streams: the sweep fails or
    # redelivers a turn whose owner stopped heartbeating, and leaves a live owner's turn alone.
    worker = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["conversation", "created_at"]),
            models.Index(fields=["status", "updated_at"]),
        ]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "client_id"], condition=~models.Q(client_id=""),
                                    name="message_unique_client_id"),
        ]

    def __str__(self) -> str:
        return f"{self.role} #{self.pk} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL_STATUSES


class ConversationKnowledgeBase(TenantOwned):
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="+")
    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["conversation", "knowledge_base"], name="convkb_unique")]
