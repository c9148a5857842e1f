"""Hybrid retrieval on the real database: vector and full-text search, fusion, reranking, and
isolation between tenants and between knowledge bases of one tenant."""

from __future__ import annotations

import random
import re

from django.db import connection

from audit.services import SYSTEM
from knowledge.chunk_store import chunks_replace, text_search, vector_search
from knowledge.ingest.types import ChunkDraft
from knowledge.models import Document, KnowledgeBase
from knowledge.rerank import EmbeddingReranker
from knowledge.retrieval import Passage, hybrid_search, retrieve, rrf
from knowledge.selectors import embedding_model_id, knowledge_base_ids_allowed
from knowledge.services.knowledge_bases import knowledge_base_create
from knowledge.services.pipeline import document_embed
from knowledge.vector_index import PARTITIONS
from tenants.models import Membership, Tenant
from tenants.rls import tenant_context

DIM = 384


def unit(vector: list[float]) -> list[float]:
    norm = sum(v * v for v in vector) ** 0.5
    return [v / norm for v in vector]


def near(base: list[float], rng: random.Random, spread: float) -> list[float]:
    return unit([b + rng.gauss(0, spread) for b in base])


def make_kb(tenant, name: str, **kwargs) -> KnowledgeBase:
    with tenant_context(tenant.pk):
        return knowledge_base_create(tenant=tenant, name=name, actor=SYSTEM, **kwargs)


def add_texts(kb: KnowledgeBase, texts: list[str], title: str = "doc") -> Document:
    """Stores chunks and embeds them with the bundled MiniLM, as the pipeline does."""
    with tenant_context(kb.tenant_id):
        document = Document.objects.create(tenant_id=kb.tenant_id, knowledge_base=kb, name=title, title=title,
                                           status="embedding")
        drafts = [ChunkDraft(ordinal=i, text=t) for i, t in enumerate(texts)]
        chunks_replace(document=document, drafts=drafts)
        Document.objects.filter(pk=document.pk).update(chunks_embedded=len(drafts))
    document_embed(tenant_id=kb.tenant_id, document_id=document.pk)
    return document


def add_vectors(kb: KnowledgeBase, vectors: list[list[float]]) -> None:
    with tenant_context(kb.tenant_id), connection.cursor() as cursor:
        document = Document.objects.create(tenant_id=kb.tenant_id, knowledge_base=kb, name="v", title="v")
        cursor.executemany(
            "INSERT INTO knowledge_chunk (tenant_id, document_id, knowledge_base_id, ordinal, text, heading,"
            " token_count, content_hash, embedding, embedding_dim, embedding_model)"
            " VALUES (%s, %s, %s, %s, %s, '', 0, '', %s::vector, %s, %s)",
            [(kb.tenant_id, document.pk, kb.pk, i, f"chunk {i}", str(v), DIM, embedding_model_id())
             for i, v in enumerate(vectors)],
        )


def embed(text: str) -> list[float]:
    from inference import runtime

    return runtime.get_embedder().embed([text])[0]


def search(tenant, kb_ids: list[int], query: str) -> list[Passage]:
    with tenant_context(tenant.pk):
        return retrieve(tenant_id=tenant.pk, knowledge_base_ids=kb_ids, query=query, embedding=embed(query),
                        model=embedding_model_id(), k=5)


def partition_of(tenant_id: int) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT r FROM generate_series(0, %s - 1) AS r"
                       " WHERE satisfies_hash_partition('knowledge_chunk'::regclass, %s, r, %s::bigint)",
                       [PARTITIONS, PARTITIONS, tenant_id])
        return int(cursor.fetchone()[0])


def neighbour_tenant(tenant) -> Tenant:
    """Another tenant whose chunks share `tenant`'s partition, and so its HNSW graph."""
    for i in range(200):
        other = Tenant.objects.create(name=f"Neighbour {i}", slug=f"neighbour-{i}")
        if partition_of(other.pk) == partition_of(tenant.pk):
            return other
    raise AssertionError("no tenant landed in the same partition")


def test_it_returns_k_results_when_another_tenant_crowds_the_neighbourhood(world) -> None:
    rng = random.Random(3)
    query = unit([rng.gauss(0, 1) for _ in range(DIM)])
    neighbour = neighbour_tenant(world.tenant_a)
    kb_b, kb_a = make_kb(neighbour, "B"), make_kb(world.tenant_a, "A")
    # Tenant B owns many chunks right next to the query; tenant A's are further away.
    add_vectors(kb_b, [near(query, rng, 0.02) for _ in range(400)])
    add_vectors(kb_a, [near(query, rng, 0.2) for _ in range(30)])
    with tenant_context(world.tenant_a.pk):
        with connection.cursor() as cursor:
            # Make the planner walk the HNSW index, as it does at scale, instead of sorting A's rows.
            for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
                cursor.execute(f"SET LOCAL {setting} = off")
            cursor.execute(
                "EXPLAIN (COSTS OFF) SELECT id FROM knowledge_chunk WHERE tenant_id = %s AND embedding_dim = 384"
                " ORDER BY (embedding::vector(384)) <=> %s::vector(384) LIMIT 10", [world.tenant_a.pk, str(query)])
            plan = "\n".join(row[0] for row in cursor.fetchall())
        found = vector_search(tenant_id=world.tenant_a.pk, knowledge_base_ids=[kb_a.pk], embedding=query,
                              model=embedding_model_id(), k=10, ef_search=10)
    # The HNSW index of one partition only: the tenant's own (partition pruning).
    scanned = re.findall(r"Index Scan using (\S+) on (knowledge_chunk_p\d+)", plan)
    assert scanned == [(f"knowledge_chunk_p{partition_of(world.tenant_a.pk)}_embedding_idx",
                        f"knowledge_chunk_p{partition_of(world.tenant_a.pk)}")]
    assert "Order By" in plan
    # The neighbour's 400 chunks are all nearer than A's 30, yet A gets its full k.
    assert len(found) == 10
    distances = [d for _, d in found]
    assert distances == sorted(distances)


def test_it_never_returns_another_tenants_canary(world) -> None:
    canary = "The vault combination is ZEBRA-CANARY-4471."
    kb_b = make_kb(world.tenant_b, "Secrets")
    add_texts(kb_b, [canary, "Tenant B's cafeteria opens at eight."])
    kb_a = make_kb(world.tenant_a, "Handbook")
    add_texts(kb_a, ["Tenant A's office is in Lisbon.", "Our vault is managed by facilities."])
    query = "What is the vault combination ZEBRA-CANARY-4471?"
    for passages in (search(world.tenant_a, [kb_a.pk], query), search(world.tenant_a, [kb_a.pk, kb_b.pk], query)):
        assert passages and all("CANARY" not in p.text for p in passages)
    with tenant_context(world.tenant_a.pk):
        # Even naming tenant B's ids outright, from tenant A's context, finds nothing of B's.
        assert text_search(tenant_id=world.tenant_b.pk, knowledge_base_ids=[kb_b.pk], query="ZEBRA",
                           model=embedding_model_id()) == []
        assert vector_search(tenant_id=world.tenant_b.pk, knowledge_base_ids=[kb_b.pk], embedding=embed(query),
                             model=embedding_model_id()) == []
    # Tenant B itself does find it, so the searches above were able to.
    assert any("CANARY" in p.text for p in search(world.tenant_b, [kb_b.pk], query))


def test_it_keeps_a_private_knowledge_base_to_its_listed_users(world) -> None:
    private = make_kb(world.tenant_a, "Board minutes", access_roles=[], member_ids=[world.erin.pk])
    public = make_kb(world.tenant_a, "Handbook")
    add_texts(private, ["The board approved the PELICAN-CANARY acquisition."])
    add_texts(public, ["Expense reports are due on the fifth of each month."])
    with tenant_context(world.tenant_a.pk):
        alice = Membership.objects.get(tenant=world.tenant_a, user=world.alice)
        erin = Membership.objects.get(tenant=world.tenant_a, user=world.erin)
        alice_ids = knowledge_base_ids_allowed(alice, [private.pk, public.pk])
        erin_ids = knowledge_base_ids_allowed(erin, [private.pk, public.pk])
    assert alice_ids == [public.pk] and sorted(erin_ids) == sorted([private.pk, public.pk])
    query = "Which acquisition did the board approve? PELICAN"
    assert all("PELICAN" not in p.text for p in search(world.tenant_a, alice_ids, query))
    assert any("PELICAN" in p.text for p in search(world.tenant_a, erin_ids, query))


def test_it_finds_chinese_text_by_full_text_search(world) -> None:
    kb = make_kb(world.tenant_a, "制度")
    add_texts(kb, ["员工每年享有十五天带薪年假，需提前两周申请。", "报销单据须在每月五日前提交财务部。"])
    with tenant_context(world.tenant_a.pk):
        found = text_search(tenant_id=world.tenant_a.pk, knowledge_base_ids=[kb.pk], query="带薪年假有几天？",
                            model=embedding_model_id())
        passages = hybrid_search(tenant_id=world.tenant_a.pk, knowledge_base_ids=[kb.pk], query="年假",
                                 embedding=embed("年假"), model=embedding_model_id())
    assert len(found) == 1
    assert passages[0].text.startswith("员工每年") and passages[0].text_rank == 1


def test_it_finds_an_exact_code_that_embeddings_blur(world) -> None:
    kb = make_kb(world.tenant_a, "Parts")
    add_texts(kb, [f"Part number XQ-{n} is a {kind} valve." for n, kind in
                   [(1001, "brass"), (2002, "steel"), (3003, "copper"), (4004, "plastic")]])
    with tenant_context(world.tenant_a.pk):
        passages = hybrid_search(tenant_id=world.tenant_a.pk, knowledge_base_ids=[kb.pk], query="XQ-3003",
                                 embedding=embed("XQ-3003"), model=embedding_model_id())
    assert "XQ-3003" in passages[0].text


def test_it_fuses_rankings_by_reciprocal_rank() -> None:
    scores = rrf([[1, 2, 3], [3, 1]])
    assert max(scores, key=lambda k: scores[k]) == 1
    assert scores[3] > scores[2]


def test_it_skips_a_near_duplicate_when_reranking() -> None:
    a = unit([1.0, 0.0, 0.0])
    a_copy = unit([1.0, 0.01, 0.0])
    b = unit([0.9, 0.436, 0.0])

    def passage(i: int, vector: list[float], score: float) -> Passage:
        return Passage(chunk_id=i, document_id=1, knowledge_base_id=1, document_title="d", ordinal=i, heading="",
                       text=str(i), page=None, score=score, embedding=vector)

    chosen = EmbeddingReranker(diversity=1.0).rerank("q", a, [passage(1, a, 0.03), passage(2, a_copy, 0.03),
                                                            passage(3, b, 0.03)], k=2)
    assert [p.chunk_id for p in chosen] == [1, 3]
