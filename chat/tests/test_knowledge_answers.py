"""Answers from knowledge bases: choosing them, retrieval in the turn, the prompt, citations, audit."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.template.loader import render_to_string
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from audit.services import SYSTEM, actor_for
from chat import services, turns
from chat.models import Conversation, ConversationKnowledgeBase, Message
from chat.prompts import SOURCES_INSTRUCTIONS, build_chat_messages
from knowledge import chunk_store
from knowledge.ingest.types import ChunkDraft
from knowledge.models import Document, KnowledgeBase, KnowledgeBaseMember
from knowledge.retrieval import Passage
from knowledge.services import knowledge_bases, pipeline
from tenants.rls import tenant_context

LEAVE = [
    ("Parental leave", "New parents get sixteen weeks of paid parental leave, to be taken within the first "
                       "year after the birth or adoption of their child."),
    ("Parental leave > Applying", "Tell your manager and HR at least eight weeks before the leave starts."),
]
TRAVEL = [
    ("Travel", "Book flights through the travel desk at least two weeks ahead. Economy class is used for "
               "flights under six hours."),
    ("Expenses", "Submit receipts within thirty days; expenses are reimbursed with the next salary payment."),
]
QUESTION = "How many weeks of paid parental leave do new parents get?"


def make_kb(tenant, name: str, documents: dict[str, list[tuple[str, str]]],
            access_roles: list[str] | None = None) -> tuple[KnowledgeBase, dict[str, Document]]:
    """A knowledge base with embedded chunks, written without the parsing pipeline."""
    made: dict[str, Document] = {}
    with tenant_context(tenant.pk):
        kb = knowledge_bases.knowledge_base_create(tenant=tenant, name=name, access_roles=access_roles,
                                                      actor=SYSTEM)
        for title, sections in documents.items():
            document = Document.objects.create(tenant=tenant, knowledge_base=kb, title=title,
                                               name=f"{title}.md", status=Document.Status.EMBEDDING)
            drafts = [ChunkDraft(ordinal=i, heading=h, text=t) for i, (h, t) in enumerate(sections)]
            counts = chunk_store.chunks_replace(document=document, drafts=drafts)
            Document.objects.filter(pk=document.pk).update(chunk_count=len(drafts),
                                                           chunks_embedded=counts["new"])
            made[title] = document
    for document in made.values():
        pipeline.document_embed(tenant_id=tenant.pk, document_id=document.pk)
    return kb, made


@pytest.fixture
def handbook(world) -> tuple[KnowledgeBase, dict[str, Document]]:
    return make_kb(world.tenant_a, "Handbook", {"Parental leave policy": LEAVE, "Travel policy": TRAVEL})


@pytest.fixture
def conversation(world) -> Conversation:
    with tenant_context(world.tenant_a.pk):
        return Conversation.objects.create(tenant=world.tenant_a, user=world.alice, title="HR questions")


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def choose(world, conversation: Conversation, ids: list[int]) -> list[int]:
    from tenants.models import Membership

    with tenant_context(conversation.tenant_id):
        membership = Membership.objects.get(tenant_id=conversation.tenant_id, user_id=conversation.user_id)
        return services.conversation_set_knowledge_bases(
            conversation=conversation, knowledge_base_ids=ids, membership=membership,
            actor=actor_for(user_id=conversation.user_id, role=membership.role))


def submit(conversation: Conversation, text: str, django_capture_on_commit_callbacks) -> Message:
    # The test runs the turn itself: the task queued on commit is captured, not executed.
    with tenant_context(conversation.tenant_id), django_capture_on_commit_callbacks(execute=False):
        _, reply = services.message_submit(
            conversation=conversation, text=text,
            actor=actor_for(user_id=conversation.user_id, role="employee"),
        )
    return reply


def run_turn(reply: Message) -> Message:
    turns.message_generate(tenant_id=reply.tenant_id, message_id=reply.pk)
    with tenant_context(reply.tenant_id):
        return Message.objects.get(pk=reply.pk)


def retrieve_events(tenant_id: int) -> list[AuditEvent]:
    with tenant_context(tenant_id):
        return list(AuditEvent.objects.filter(action="message.retrieve").order_by("seq"))


@pytest.fixture
def prompts(monkeypatch) -> list[list[dict[str, str]]]:
    """The prompt of each turn, as the engine received it."""
    seen: list[list[dict[str, str]]] = []

    def spy(**kwargs: object) -> list[dict[str, str]]:
        built = build_chat_messages(**kwargs)  # type: ignore[arg-type]
        seen.append(built)
        return built

    monkeypatch.setattr(turns, "build_chat_messages", spy)
    return seen


# --- choosing knowledge bases ----------------------------------------------------------------------

def test_it_keeps_only_the_knowledge_bases_the_member_may_use(world, conversation) -> None:
    handbook, _ = make_kb(world.tenant_a, "Handbook", {})
    owners_only, _ = make_kb(world.tenant_a, "Board papers", {}, access_roles=["owner"])
    private, _ = make_kb(world.tenant_a, "Project X", {}, access_roles=[])
    other_tenant, _ = make_kb(world.tenant_b, "B handbook", {})
    with tenant_context(world.tenant_a.pk):
        KnowledgeBaseMember.objects.create(tenant=world.tenant_a, knowledge_base=private, user=world.alice)

    requested = [handbook.pk, owners_only.pk, private.pk, other_tenant.pk, 999_999]
    chosen = choose(world, conversation, requested)

    assert chosen == sorted([handbook.pk, private.pk])
    with tenant_context(world.tenant_a.pk):
        assert sorted(ConversationKnowledgeBase.objects.filter(conversation=conversation)
                      .values_list("knowledge_base_id", flat=True)) == chosen
        event = AuditEvent.objects.get(action="conversation.knowledge_bases")
    assert event.target_id == str(conversation.pk) and event.actor_id == world.alice.pk
    assert event.payload["knowledge_base_ids"] == chosen
    assert event.payload["refused_ids"] == sorted([owners_only.pk, other_tenant.pk, 999_999])

    # Choosing again replaces the choice.
    assert choose(world, conversation, [private.pk]) == [private.pk]
    with tenant_context(world.tenant_a.pk):
        assert list(ConversationKnowledgeBase.objects.filter(conversation=conversation)
                    .values_list("knowledge_base_id", flat=True)) == [private.pk]


def test_it_chooses_knowledge_bases_from_the_conversation_page(world, conversation) -> None:
    handbook, _ = make_kb(world.tenant_a, "Handbook", {})
    owners_only, _ = make_kb(world.tenant_a, "Board papers", {}, access_roles=["owner"])
    client = client_for(world.alice)
    page = client.get(reverse("chat:conversation_detail", args=[conversation.pk])).content.decode()
    assert 'id="knowledge-chooser"' in page and "Handbook" in page
    assert "Board papers" not in page  # Alice may not use it, so it is not offered

    url = reverse("chat:conversation_set_knowledge_bases", args=[conversation.pk])
    assert url == f"/c/{conversation.pk}/knowledge/"
    response = client.post(url, {"knowledge_base": [str(handbook.pk), str(owners_only.pk), "x"]},
                           HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<form id="knowledge-chooser"')  # the partial, for htmx to swap
    assert f'value="{handbook.pk}" checked' in body
    with tenant_context(world.tenant_a.pk):
        assert list(ConversationKnowledgeBase.objects.filter(conversation=conversation)
                    .values_list("knowledge_base_id", flat=True)) == [handbook.pk]

    page = client.get(reverse("chat:conversation_detail", args=[conversation.pk])).content.decode()
    assert f'value="{handbook.pk}" checked' in page

    # Without htmx: back to the conversation. Unticking every box clears the choice.
    response = client.post(url, {})
    assert response.status_code == 302
    assert response["Location"] == reverse("chat:conversation_detail", args=[conversation.pk])
    with tenant_context(world.tenant_a.pk):
        assert not ConversationKnowledgeBase.objects.filter(conversation=conversation).exists()


def test_it_hides_the_chooser_when_the_member_may_use_no_knowledge_base(world, conversation) -> None:
    make_kb(world.tenant_a, "Board papers", {}, access_roles=["owner"])
    url = reverse("chat:conversation_detail", args=[conversation.pk])
    page = client_for(world.alice).get(url).content.decode()
    assert "knowledge-chooser" not in page


def test_it_returns_404_to_charlie_tenant_b_and_to_others_for_the_chooser(world, conversation) -> None:
    handbook, _ = make_kb(world.tenant_a, "Handbook", {})
    url = reverse("chat:conversation_set_knowledge_bases", args=[conversation.pk])
    # Charlie (tenant B) gets 404; so does Bob, in the same tenant but not the conversation's owner.
    for user in (world.charlie, world.bob):
        assert client_for(user).post(url, {"knowledge_base": [str(handbook.pk)]}).status_code == 404
    assert client_for(world.alice).get(url).status_code == 405
    with tenant_context(world.tenant_a.pk):
        assert not ConversationKnowledgeBase.objects.exists()
        assert not AuditEvent.objects.filter(action="conversation.knowledge_bases").exists()


# --- the turn ------------------------------------------------------------------------------------

def test_it_answers_from_the_chosen_knowledge_base_with_citations_and_one_audit_event(
    world, conversation, handbook, use_model, tiny_model_dir, prompts, django_capture_on_commit_callbacks
) -> None:
    kb, documents = handbook
    choose(world, conversation, [kb.pk])
    use_model(tiny_model_dir, CHAT_MAX_NEW_TOKENS=8)
    reply = run_turn(submit(conversation, QUESTION, django_capture_on_commit_callbacks))

    assert reply.status == Message.Status.DONE
    assert reply.citations, "the turn retrieved nothing"
    leave = documents["Parental leave policy"]
    first = reply.citations[0]
    assert first["document_id"] == leave.pk and first["document_title"] == "Parental leave policy"
    assert first["heading"] == "Parental leave" and "sixteen weeks" in first["snippet"]
    assert [c["n"] for c in reply.citations] == list(range(1, len(reply.citations) + 1))
    assert all(len(c["snippet"]) <= 242 for c in reply.citations)
    assert reply.timings["retrieve_ms"] > 0 and "retrieval_error" not in reply.timings

    # The prompt: system prompt kept, the question sent with the same numbered passages.
    (prompt,) = prompts
    assert prompt[0]["role"] == "system" and prompt[-1]["role"] == "user"
    last = prompt[-1]["content"]
    assert last.startswith(SOURCES_INSTRUCTIONS) and last.endswith(f"Question: {QUESTION}")
    assert "[1] Parental leave policy — Parental leave\nNew parents get sixteen weeks" in last

    (event,) = retrieve_events(world.tenant_a.pk)
    assert event.target_type == "message" and event.target_id == str(reply.pk)
    assert (event.actor_id, event.actor_role, event.actor_name) == (world.alice.pk, "employee", "alice")
    assert event.payload["chunk_ids"] == [c["chunk_id"] for c in reply.citations]
    assert event.payload["document_ids"][0] == leave.pk
    assert event.payload["knowledge_base_ids"] == [kb.pk]
    assert event.payload["query_chars"] == len(QUESTION)

    # What the browser receives in the "end" frame: the Sources list, linking to the passage.
    html = render_to_string("chat/conversation.html#message", {"message": reply})
    href = f"/knowledge/documents/{leave.pk}/?chunk={first['chunk_id']}#chunk-{first['chunk_id']}"
    assert '<ol class="sources">' in html and f'data-document-id="{leave.pk}"' in html
    assert f'href="{href}"' in html and "Parental leave policy — Parental leave" in html


def test_it_does_not_retrieve_or_audit_without_a_chosen_knowledge_base(
    world, conversation, handbook, use_model, tiny_model_dir, prompts, django_capture_on_commit_callbacks
) -> None:
    use_model(tiny_model_dir, CHAT_MAX_NEW_TOKENS=4)
    reply = run_turn(submit(conversation, QUESTION, django_capture_on_commit_callbacks))
    assert reply.status == Message.Status.DONE and reply.citations == []
    assert "retrieve_ms" not in reply.timings
    assert prompts[0][-1] == {"role": "user", "content": QUESTION}
    assert retrieve_events(world.tenant_a.pk) == []


def test_it_leaves_out_a_knowledge_base_whose_access_was_revoked_after_it_was_chosen(
    world, conversation, handbook, use_model, tiny_model_dir, prompts, django_capture_on_commit_callbacks
) -> None:
    kb, _ = handbook
    travel_kb, travel_docs = make_kb(world.tenant_a, "Travel desk", {"Travel guide": TRAVEL})
    assert choose(world, conversation, [kb.pk, travel_kb.pk]) == sorted([kb.pk, travel_kb.pk])
    # The handbook becomes private to the knowledge admins after Alice chose it.
    with tenant_context(world.tenant_a.pk):
        KnowledgeBase.objects.filter(pk=kb.pk).update(access_roles=["knowledge_admin"])
    use_model(tiny_model_dir, CHAT_MAX_NEW_TOKENS=4)
    reply = run_turn(submit(conversation, QUESTION, django_capture_on_commit_callbacks))

    assert reply.status == Message.Status.DONE
    assert reply.citations and {c["knowledge_base_id"] for c in reply.citations} == {travel_kb.pk}
    assert {c["document_id"] for c in reply.citations} <= {travel_docs["Travel guide"].pk}
    assert "sixteen weeks" not in prompts[0][-1]["content"]
    (event,) = retrieve_events(world.tenant_a.pk)
    assert event.payload["knowledge_base_ids"] == [travel_kb.pk]

    # Revoked entirely: nothing is searched, nothing is recorded, the question goes as asked.
    with tenant_context(world.tenant_a.pk):
        KnowledgeBase.objects.filter(pk=travel_kb.pk).update(access_roles=[])
    second = run_turn(submit(conversation, "And for travel?", django_capture_on_commit_callbacks))
    assert second.status == Message.Status.DONE and second.citations == []
    assert prompts[1][-1] == {"role": "user", "content": "And for travel?"}
    assert len(retrieve_events(world.tenant_a.pk)) == 1


def test_it_records_a_search_that_found_nothing(
    world, conversation, use_model, tiny_model_dir, django_capture_on_commit_callbacks
) -> None:
    empty, _ = make_kb(world.tenant_a, "Empty", {})
    choose(world, conversation, [empty.pk])
    use_model(tiny_model_dir, CHAT_MAX_NEW_TOKENS=4)
    reply = run_turn(submit(conversation, QUESTION, django_capture_on_commit_callbacks))
    assert reply.status == Message.Status.DONE and reply.citations == []
    (event,) = retrieve_events(world.tenant_a.pk)
    assert event.payload == {"conversation_id": conversation.pk, "chunk_ids": [], "document_ids": [],
                             "knowledge_base_ids": [empty.pk], "query_chars": len(QUESTION)}


def test_it_still_answers_when_retrieval_fails(
    world, conversation, handbook, use_model, tiny_model_dir, prompts, monkeypatch, caplog,
    django_capture_on_commit_callbacks
) -> None:
    kb, _ = handbook
    choose(world, conversation, [kb.pk])

    def broken(**kwargs: object) -> list[Passage]:
        raise RuntimeError("index unavailable")

    monkeypatch.setattr("knowledge.retrieval.retrieve", broken)
    use_model(tiny_model_dir, CHAT_MAX_NEW_TOKENS=4)
    reply = run_turn(submit(conversation, QUESTION, django_capture_on_commit_callbacks))

    assert reply.status == Message.Status.DONE and reply.content and reply.citations == []
    assert reply.timings["retrieval_error"] == "RuntimeError: index unavailable"
    assert "retrieval for turn" in caplog.text
    assert prompts[0][-1] == {"role": "user", "content": QUESTION}
    assert retrieve_events(world.tenant_a.pk) == []


# --- the prompt and the rendering ----------------------------------------------------------------

def passage(n: int, text: str, heading: str = "") -> Passage:
    return Passage(chunk_id=100 + n, document_id=10 + n, knowledge_base_id=1, document_title=f"Doc {n}",
                   ordinal=0, heading=heading, text=text, page=None)


def test_it_numbers_the_passages_in_the_last_user_message_only(
    world, conversation, django_capture_on_commit_callbacks
) -> None:
    with tenant_context(world.tenant_a.pk):
        earlier = Message.objects.create(tenant=world.tenant_a, conversation=conversation, role="user",
                                         content="Hello")
        Message.objects.create(tenant=world.tenant_a, conversation=conversation, role="assistant",
                               content="Hi!", reply_to=earlier)
    reply = submit(conversation, QUESTION, django_capture_on_commit_callbacks)
    long_text = "word " * 600
    with tenant_context(world.tenant_a.pk):
        built = build_chat_messages(assistant_message=reply,
                                    passages=[passage(1, "Sixteen weeks.", "Leave"), passage(2, long_text)])
    assert [m["role"] for m in built] == ["system", "user", "assistant", "user"]
    assert built[1]["content"] == "Hello" and built[2]["content"] == "Hi!"
    content = built[-1]["content"]
    assert content.startswith(SOURCES_INSTRUCTIONS
                              + "\n\n[1] Doc 1 — Leave\nSixteen weeks.\n\n[2] Doc 2\nword")
    assert content.endswith(f"\n\nQuestion: {QUESTION}")
    second = content.split("[2] Doc 2\n", 1)[1].split("\n\nQuestion:")[0]
    assert len(second) <= 1202 and second.endswith("…")  # each passage is cut for the small model


def citations_for(document_id: int) -> list[dict[str, object]]:
    return [
        {"n": 1, "chunk_id": 501, "document_id": document_id, "knowledge_base_id": 1,
         "document_title": "Leave <policy>", "heading": "Parental leave", "page": 3,
         "snippet": "Sixteen weeks"},
        {"n": 2, "chunk_id": 502, "document_id": document_id, "knowledge_base_id": 1,
         "document_title": "Travel", "heading": "", "page": None, "snippet": "Book \"early\" <b>"},
    ]


def test_it_links_citation_markers_and_lists_the_sources(world, conversation) -> None:
    message = Message(pk=77, tenant=world.tenant_a, conversation=conversation, role="assistant",
                      status=Message.Status.DONE, citations=citations_for(42),
                      content="Parents get **sixteen weeks** [1]. Not [7], and `[2]` is code.")
    html = render_to_string("chat/conversation.html#message", {"message": message})
    href1 = "/knowledge/documents/42/?chunk=501#chunk-501"
    assert reverse("knowledge:document_detail", args=[42]) == "/knowledge/documents/42/"
    assert f'<a class="cite" href="{href1}"' in html and ">[1]</a>" in html
    assert "Not [7]" in html  # a number with no citation is left as text
    assert "<code>[2]</code>" in html  # and a marker in code is not touched
    # The Sources list, shown whole even though the answer cites only [1].
    assert '<ol class="sources">' in html
    assert 'id="msg-77-source-1" data-n="1" data-document-id="42" data-chunk-id="501"' in html
    assert 'id="msg-77-source-2"' in html and "/knowledge/documents/42/?chunk=502#chunk-502" in html
    assert "Leave &lt;policy&gt; — Parental leave" in html and "(p. 3)" in html
    assert 'title="Book &quot;early&quot; &lt;b&gt;"' in html


def test_it_shows_sources_even_when_the_answer_cites_none_but_not_while_writing(world, conversation) -> None:
    message = Message(pk=78, tenant=world.tenant_a, conversation=conversation, role="assistant",
                      status=Message.Status.DONE, citations=citations_for(42), content="Sixteen weeks.")
    html = render_to_string("chat/conversation.html#message", {"message": message})
    assert '<ol class="sources">' in html and 'class="cite"' not in html
    message.status = Message.Status.STREAMING
    assert "sources" not in render_to_string("chat/conversation.html#message", {"message": message})


@pytest.mark.parametrize("content", [
    '<script>alert(1)</script> [1]',
    '[1](javascript:alert(1)) [1]',
    '<a class="cite" href="javascript:alert(1)">[1]</a>',
    '[x](http://example.com "[1]") [1]',
    '[1]\n\n[1]: javascript:alert(1)',
])
def test_it_links_citations_without_letting_the_model_inject_markup(world, conversation, content) -> None:
    from chat.rendering import render_answer

    html = render_answer(content, citations_for(42))
    elements = Elements()
    elements.feed(html)
    assert {tag for tag, _ in elements.found} <= {"p", "a"}
    hrefs = [attrs.get("href") or "" for tag, attrs in elements.found if tag == "a"]
    assert not any(href.startswith("javascript") for href in hrefs)
    cites = [attrs for tag, attrs in elements.found if tag == "a" and attrs.get("class")]
    # Every link with a class is one we made, pointing at the cited passage.
    assert cites and all(attrs == {"class": "cite", "href": "/knowledge/documents/42/?chunk=501#chunk-501",
                                   "title": "Leave <policy> — Parental leave",
                                   "rel": "noopener noreferrer nofollow"} for attrs in cites)
    if content.startswith("[x]"):
        assert {"href": "http://example.com", "title": "[1]", "rel": "noopener noreferrer nofollow"} in [
            attrs for tag, attrs in elements.found if tag == "a"]  # a marker inside an attribute stays text


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))
