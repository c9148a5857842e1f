from __future__ import annotations

import pytest
from django.test import override_settings

from audit.models import AuditEvent
from audit.services import actor_for
from chat import services, streams
from chat.models import Conversation, Message
from tenants.rls import tenant_context


@pytest.fixture
def conversation(world) -> Conversation:
    with tenant_context(world.tenant_a.pk):
        return Conversation.objects.create(tenant=world.tenant_a, user=world.alice)


def actor(world):
    return actor_for(user_id=world.alice.pk, role="employee", ip="127.0.0.1")


def test_it_stores_the_question_a_pending_reply_and_an_audit_event(
    world, conversation, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks() as callbacks, tenant_context(world.tenant_a.pk):
        user_message, reply = services.message_submit(
            conversation=conversation, text="  What is our leave policy?  ", actor=actor(world)
        )
    assert user_message.content == "What is our leave policy?"
    assert user_message.tenant_id == reply.tenant_id == world.tenant_a.pk
    assert reply.status == Message.Status.PENDING and reply.reply_to_id == user_message.pk
    with tenant_context(world.tenant_a.pk):
        conversation.refresh_from_db()
        event = AuditEvent.objects.get(action="message.submit")
    assert conversation.title == "What is our leave policy?"
    assert event.target_id == str(user_message.pk) and event.actor_id == world.alice.pk
    assert len(callbacks) == 1  # the turn is queued only after commit


def test_it_refuses_an_empty_message_and_stores_nothing(world, conversation) -> None:
    with pytest.raises(services.ChatInputError, match="empty"), tenant_context(world.tenant_a.pk):
        services.message_submit(conversation=conversation, text=" \n\t ", actor=actor(world))
    with tenant_context(world.tenant_a.pk):
        assert Message.objects.count() == 0
        assert not AuditEvent.objects.filter(action="message.submit").exists()


@override_settings(CHAT_MAX_MESSAGE_CHARS=100)
def test_it_refuses_a_message_over_the_limit_and_names_the_limit(world, conversation) -> None:
    with pytest.raises(services.ChatInputError, match="limit is 100"), tenant_context(world.tenant_a.pk):
        services.message_submit(conversation=conversation, text="x" * 101, actor=actor(world))
    with tenant_context(world.tenant_a.pk):
        assert Message.objects.count() == 0


def test_it_cancels_a_queued_turn_and_ends_its_stream(world, conversation, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=False), tenant_context(world.tenant_a.pk):
        _, reply = services.message_submit(conversation=conversation, text="hello", actor=actor(world))
    with django_capture_on_commit_callbacks(execute=True), tenant_context(world.tenant_a.pk):
        services.message_cancel(message=reply, actor=actor(world))
    with tenant_context(world.tenant_a.pk):
        reply.refresh_from_db()
    assert reply.status == Message.Status.CANCELLED
    assert streams.is_cancel_requested(reply)
    entries = streams.read_all(reply)
    assert [e.kind for e in entries] == ["end"] and entries[0].fields["status"] == "cancelled"


def test_it_renames_and_deletes_a_conversation_with_audit(world, conversation) -> None:
    with tenant_context(world.tenant_a.pk):
        services.conversation_rename(conversation=conversation, title="  Q3   planning ", actor=actor(world))
        conversation.refresh_from_db()
    assert conversation.title == "Q3 planning"
    with tenant_context(world.tenant_a.pk):
        services.conversation_delete(conversation=conversation, actor=actor(world))
    with tenant_context(world.tenant_a.pk):
        assert not Conversation.objects.filter(pk=conversation.pk).exists()
        assert list(AuditEvent.objects.order_by("seq").values_list("action", flat=True)) == [
            "conversation.rename", "conversation.delete",
        ]


def test_it_renders_markdown_without_raw_html() -> None:
    from chat.rendering import render_markdown

    html = render_markdown(
        "# Title\n\n**bold** <script>alert(1)</script> <img src=x onerror=alert(1)>\n\n"
        "```python\nprint('<b>')\n```\n\n[x](javascript:alert(1))"
    )
    assert "<h1>Title</h1>" in html and "<strong>bold</strong>" in html
    assert "<script" not in html and "<img" not in html and 'href="javascript' not in html
    assert "&lt;script&gt;" in html  # shown as text, not dropped
    assert '<pre><code class="language-python">' in html and "&lt;b&gt;" in html


def test_the_worker_reads_every_running_turns_stop_flag_in_one_poll(
    world, conversation, django_capture_on_commit_callbacks
) -> None:
    """The gpu worker reads all its turns' Stop flags together (streams.StopFlags): a Stop pressed
    on one turn reaches that turn only, and a turn that ended is no longer read."""
    with django_capture_on_commit_callbacks(execute=False), tenant_context(world.tenant_a.pk):
        _, first = services.message_submit(conversation=conversation, text="one", actor=actor(world))
        _, second = services.message_submit(conversation=conversation, text="two", actor=actor(world))
    flags = streams.StopFlags(poll_s=3600)  # polled by hand below, not by its thread
    first_key, second_key = flags.watch(first), flags.watch(second)
    flags.poll()
    assert not flags.is_set(first_key) and not flags.is_set(second_key)

    streams.cancel_request(second)
    assert not flags.is_set(second_key)  # until the next poll
    flags.poll()
    assert flags.is_set(second_key) and not flags.is_set(first_key)

    flags.unwatch(second_key)
    flags.poll()
    assert not flags.is_set(second_key)
