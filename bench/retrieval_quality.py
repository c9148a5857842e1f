"""Retrieval quality: hit@1, hit@5 and MRR@10 of each retrieval method on a small company QA set.

Data: the documents in bench/data/qa/docs (11 made-up company documents: handbook, security,
travel, product FAQ, runbook, onboarding (HTML), benefits, facilities (TXT), procurement, and two
in Chinese), ingested through the real pipeline in-process (upload, parse in the child process,
chunk with the knowledge base's settings, embed with the bundled MiniLM), and the questions in
bench/data/qa/questions.json. Each question names an `answer` substring found verbatim in exactly
one document; a retrieved chunk is a hit when its text contains that substring, so the gold
passage is found after chunking and survives any chunk boundary (a question whose answer a
boundary cuts in two is reported and left out). Questions are tagged en/zh and by kind:
paraphrase (few shared words), lexical, code (exact identifiers), cross-lingual.

Methods, each ranking the top 10 for every question (top KNOWLEDGE_TOP_K for `retrieve()`):
  vector only (`vector_search`; the baseline: every MRR is also shown as a ratio against it),
  full-text only (`text_search`), hybrid (`hybrid_search`: both fused by reciprocal rank),
  hybrid + NoReranker (must equal hybrid), hybrid + the reranker of the original commit
  (cosine 0.6 / fused 0.4, MMR 0.15), hybrid + `EmbeddingReranker()` as it ships now, and
  `retrieve()` itself (after the relevance gate).
It then tries the reranker variants of VARIANTS (weights of cosine similarity against fused rank,
the fusion's rank constant, text-search weight, a bonus for codes found verbatim, neighbouring
chunks' similarity, MMR), picks the one with the best MRR@10 on the tuning half of the "main"
questions (a fixed-seed split, stratified by language; within TIE, the one with fewer parts), and
shows every variant on the held-out half and on the "fresh" questions, which were written after
the choice and never tuned on. `EmbeddingReranker()` must reproduce the chosen variant. Last, the
relevance gate: how often each margin drops the gold passage from the reranked top 5, and how
many passages it keeps.

The dataset is kept between runs (tenant `bench-quality` in dsw_bench, one knowledge base per chunk
setting and embedding model); a changed document is ingested again as a new version, a removed one is deleted.

Run:  .venv/bin/python bench/retrieval_quality.py [--chunk-tokens 256] [--overlap 32] [--seed 7] [--verbose]
(after `./dsw run` or `./dsw test` has installed the venv once). It uses its own database, dsw_bench.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from stack import ROOT, prepare_stack

if TYPE_CHECKING:
    from knowledge.retrieval import Passage

# One chunk row as loaded for scoring: its fields, the embedding as a numpy vector.
ChunkRow = dict[str, Any]

DATA = ROOT / "bench" / "data" / "qa"
TENANT_SLUG = "bench-quality"
DEPTH = 10  # MRR@10, and the length of every ranking
MARGINS = [0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.40, None]  # None: no gate
SPARE = 3  # the gate variant that keeps full-text search's top SPARE (see the gate table)
TIE = 0.005  # tuning-half MRRs closer than this are a tie, won by the variant with fewer parts


@dataclass
class Question:
    id: str
    batch: str  # "main" (split into tuning and held-out halves) or "fresh" (written after the choice)
    lang: str
    kind: str
    doc: str
    question: str
    answer: str
    gold: set[int] = field(default_factory=set)
    embedding: np.ndarray | None = None
    split: str = ""


@dataclass
class Candidates:
    """What the searches return for one question, computed once."""

    vector: list[int]
    text: list[int]
    hybrid: list[Passage]  # fused order, embeddings loaded
    retrieved: list[Passage]  # retrieve()'s answer


# --- the dataset in the database ---------------------------------------------------------------

def ingest(chunk_tokens: int, overlap: int) -> tuple[int, int]:
    """The bench tenant's knowledge base for this chunk setting, with every document ingested and ready."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from audit.services import SYSTEM
    from knowledge.models import Document, KnowledgeBase
    from knowledge.selectors import embedding_model_id
    from knowledge.services import documents as document_services
    from knowledge.services import pipeline
    from knowledge.services.documents import document_delete, documents_upload
    from knowledge.services.knowledge_bases import knowledge_base_create
    from knowledge.services.pipeline import document_embed, document_ingest
    from tenants.models import Tenant
    from tenants.rls import tenant_context

    # There is no worker for dsw_bench's queues: the pipeline's steps run here, in this process.
    document_services._enqueue_ingest = lambda document: None
    pipeline._enqueue_embed = lambda tenant_id, document_id: None

    tenant, _ = Tenant.objects.get_or_create(slug=TENANT_SLUG, defaults={"name": "Bench retrieval quality"})
    name = f"QA set {chunk_tokens}/{overlap} {embedding_model_id()}"  # another model: another knowledge base
    with tenant_context(tenant.pk):
        kb = KnowledgeBase.objects.filter(tenant=tenant, name=name).first() or knowledge_base_create(
            tenant=tenant, name=name, chunk_max_tokens=chunk_tokens, chunk_overlap_tokens=overlap, actor=SYSTEM)
    files = sorted(p for p in (DATA / "docs").iterdir() if p.is_file())
    outcomes = documents_upload(
        knowledge_base=kb, files=[SimpleUploadedFile(p.name, p.read_bytes()) for p in files], uploaded_by=None,
        actor=SYSTEM)
    names = {p.name for p in files}
    with tenant_context(tenant.pk):
        for gone in Document.objects.filter(knowledge_base=kb).exclude(name__in=names):
            document_delete(document=gone, actor=SYSTEM)
    work = 0
    for outcome in outcomes:
        document = outcome.document
        if outcome.result == "rejected":
            raise SystemExit(f"{document.name}: rejected: {document.error}")
        if document.status != Document.Status.READY:
            document_ingest(tenant_id=tenant.pk, document_id=document.pk)
            document_embed(tenant_id=tenant.pk, document_id=document.pk)
            work += 1
    with tenant_context(tenant.pk):
        documents = list(Document.objects.filter(knowledge_base=kb).values_list("name", "status", "error"))
    failed = [(n, e) for n, s, e in documents if s != Document.Status.READY]
    if failed:
        raise SystemExit(f"documents not ready: {failed}")
    print(f"knowledge base '{name}': {len(documents)} documents ready ({work} (re)ingested this run)")
    return tenant.pk, kb.pk


def load_chunks(tenant_id: int, kb_id: int) -> dict[int, ChunkRow]:
    from knowledge.models import Chunk
    from tenants.rls import tenant_context

    with tenant_context(tenant_id):
        rows: list[ChunkRow] = [dict(row) for row in Chunk.objects.filter(knowledge_base_id=kb_id).values(
            "id", "document_id", "document__name", "ordinal", "heading", "text", "token_count", "embedding")]
    for row in rows:
        row["embedding"] = np.asarray(row["embedding"], dtype=np.float64)
    return {row["id"]: row for row in rows}


def load_questions(chunks: dict[int, ChunkRow], seed: int) -> tuple[list[Question], list[Question]]:
    """(questions with their gold chunks, questions whose answer no single chunk holds)."""
    questions = [Question(**q) for q in json.loads((DATA / "questions.json").read_text())]
    usable: list[Question] = []
    cut: list[Question] = []
    for q in questions:
        q.gold = {cid for cid, c in chunks.items() if q.answer in c["text"]}
        docs = {chunks[cid]["document__name"] for cid in q.gold}
        if docs - {q.doc}:
            raise SystemExit(f"{q.id}: answer {q.answer!r} found in {docs}, expected only {q.doc}")
        (usable if q.gold else cut).append(q)
    rng = random.Random(seed)
    for q in usable:
        q.split = q.batch
    for lang in sorted({q.lang for q in usable}):  # stratified: both halves get both languages
        group = [q for q in usable if q.lang == lang and q.batch == "main"]
        rng.shuffle(group)
        for n, q in enumerate(group):
            q.split = "tune" if n % 2 == 0 else "held-out"
    return usable, cut


def search_all(tenant_id: int, kb_id: int, questions: list[Question]) -> dict[str, Candidates]:
    from django.conf import settings

    from inference import runtime
    from knowledge.chunk_store import text_search, vector_search
    from knowledge.retrieval import hybrid_search, retrieve
    from knowledge.selectors import embedding_model_id
    from tenants.rls import tenant_context

    model = embedding_model_id()
    vectors = runtime.get_embedder().embed([q.question for q in questions])
    found: dict[str, Candidates] = {}
    n = settings.KNOWLEDGE_CANDIDATES
    kb_ids = [kb_id]
    for q, vector in zip(questions, vectors, strict=True):
        q.embedding = np.asarray(vector, dtype=np.float64)
        with tenant_context(tenant_id):
            found[q.id] = Candidates(
                vector=[i for i, _ in vector_search(tenant_id=tenant_id, knowledge_base_ids=kb_ids, embedding=vector,
                                                    model=model, k=n)],
                text=[i for i, _ in text_search(tenant_id=tenant_id, knowledge_base_ids=kb_ids, query=q.question,
                                                model=model, k=n)],
                hybrid=hybrid_search(tenant_id=tenant_id, knowledge_base_ids=kb_ids, query=q.question,
                                     embedding=vector, model=model, candidates=n),
                retrieved=retrieve(tenant_id=tenant_id, knowledge_base_ids=kb_ids, query=q.question,
                                   embedding=vector, model=model),
            )
    return found


# --- metrics ------------------------------------------------------------------------------------

def rank_of(ranking: Sequence[int], gold: set[int]) -> int | None:
    return next((r for r, cid in enumerate(ranking[:DEPTH], start=1) if cid in gold), None)


def rr(rank: int | None) -> float:
    return 1 / rank if rank else 0.0


@dataclass
class Score:
    n: int
    hit1: float
    hit5: float
    mrr: float


def score(ranks: Sequence[int | None]) -> Score:
    n = len(ranks)
    if not n:
        return Score(0, float("nan"), float("nan"), float("nan"))
    return Score(n, sum(r == 1 for r in ranks) / n, sum(r is not None and r <= 5 for r in ranks) / n,
                 sum(rr(r) for r in ranks) / n)


Method = Callable[[Question, Candidates], list[int]]


def query_vector(q: Question) -> list[float]:
    """The question's embedding as the rerankers take it (search_all has set it)."""
    assert q.embedding is not None
    return [float(x) for x in q.embedding]


def rerank_with(reranker: object) -> Method:
    def method(q: Question, c: Candidates) -> list[int]:
        # Rerankers set score and similarity on the passages they get: give each its own copy.
        chosen = reranker.rerank(q.question, query_vector(q), copy.deepcopy(c.hybrid), DEPTH)  # type: ignore[attr-defined]
        return [p.chunk_id for p in chosen]
    return method


# --- reranker variants ---------------------------------------------------------------------------

CODE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-.][A-Za-z0-9]+)+|[A-Za-z]+\d+[A-Za-z0-9]*")


def codes_in(text: str) -> set[str]:
    """Identifier-like tokens: BCN-4012, RB-017, ISP-2024-03, SEV1, ARF-12 (with a letter and a
    hyphen or digit); plain words and plain numbers are the full-text search's business."""
    return {m.lower() for m in CODE.findall(text) if any(ch.isdigit() for ch in m) or "-" in m}


@dataclass(frozen=True)
class Variant:
    """One reranking recipe, scored with numpy (the shipped class must reproduce the chosen one).

    relevance = w * cos' + (1 - w) * fused / max(fused) + code_bonus * (share of the query's codes in the passage)
    fused = 1 / (rank_k + vector rank) + text_weight / (rank_k + text rank), from the ranks the
    hybrid search recorded (rank_k 60 and text_weight 1 give exactly `hybrid_search`'s score);
    cos' = cosine, min-max scaled over the candidates when `scaled`, mixed with the best cosine of
    the passage's neighbours (same document, ordinal +-1) by `neighbour`. Then MMR: a passage's
    relevance minus `diversity` times its highest cosine to one already chosen.
    """

    label: str
    w: float = 0.0
    rank_k: int = 60
    scaled: bool = False
    text_weight: float = 1.0
    code_bonus: float = 0.0
    neighbour: float = 0.0
    neighbours_from: str = "all"  # "all" chunks of the document, or only the "candidates"
    diversity: float = 0.0

    @property
    def parts(self) -> int:
        """How many mechanisms it adds to plain fusion: used to prefer the simpler of two equals."""
        return sum([self.w > 0, self.rank_k != 60, self.scaled, self.text_weight != 1.0, self.code_bonus > 0,
                    self.neighbour > 0, self.diversity > 0])


VARIANTS = [
    Variant("hybrid (fusion only)"),
    Variant("original: cos .6 + fused .4, MMR .15", w=0.6, diversity=0.15),
    Variant("original without MMR", w=0.6),
    *[Variant(f"cos {w:.1f} + fused {1 - w:.1f}", w=w) for w in (0.2, 0.4, 0.8)],
    Variant("cos only", w=1.0),
    Variant("scaled cos .3 + fused .7", w=0.3, scaled=True),
    *[Variant(f"fusion, rank constant {k}", rank_k=k) for k in (5, 10, 20)],
    Variant("fusion, text list x0.5", text_weight=0.5),
    Variant("fusion, text list x1.5", text_weight=1.5),
    Variant("fusion + code bonus .1", code_bonus=0.1),
    *[Variant(f"cos {w:.1f} + fused {1 - w:.1f} (rank constant 5)", w=w, rank_k=5) for w in (0.2, 0.5, 0.8)],
    Variant("cos .5 + fused .5 (rank constant 10)", w=0.5, rank_k=10),
    Variant("cos .5 + fused .5 (rank constant 5) + code .1", w=0.5, rank_k=5, code_bonus=0.1),
    Variant("cos .6 + fused .4, neighbours .2", w=0.6, neighbour=0.2),
    Variant("cos .6 + fused .4, neighbours .4", w=0.6, neighbour=0.4),
    Variant("cos .6 + fused .4, neighbours .2 (candidates)", w=0.6, neighbour=0.2, neighbours_from="candidates"),
    Variant("cos .5 + fused .5 (rank constant 5), neighbours .2", w=0.5, rank_k=5, neighbour=0.2),
    Variant("fusion + MMR .15", diversity=0.15),
    Variant("cos .5 + fused .5 (rank constant 5), MMR .15", w=0.5, rank_k=5, diversity=0.15),
]


def neighbour_index(chunks: dict[int, ChunkRow]) -> dict[int, list[int]]:
    at = {(c["document_id"], c["ordinal"]): cid for cid, c in chunks.items()}
    return {cid: [at[k] for k in ((c["document_id"], c["ordinal"] - 1), (c["document_id"], c["ordinal"] + 1)) if k in at]
            for cid, c in chunks.items()}


def run_variant(v: Variant, q: Question, c: Candidates, chunks: dict[int, ChunkRow],
                neighbours: dict[int, list[int]]) -> list[int]:
    passages = c.hybrid
    if not passages:
        return []
    ids = [p.chunk_id for p in passages]
    emb = np.stack([chunks[i]["embedding"] for i in ids])
    cos = emb @ q.embedding
    if v.neighbour:
        pool = set(ids) if v.neighbours_from == "candidates" else chunks.keys()
        around = np.array([max((float(chunks[n]["embedding"] @ q.embedding) for n in neighbours[i] if n in pool),
                               default=cos[k]) for k, i in enumerate(ids)])
        cos = (1 - v.neighbour) * cos + v.neighbour * around
    if v.scaled:
        spread = cos.max() - cos.min()
        cos = (cos - cos.min()) / spread if spread > 0 else np.ones_like(cos)
    fused = np.array([(1 / (v.rank_k + p.vector_rank) if p.vector_rank else 0.0)
                      + (v.text_weight / (v.rank_k + p.text_rank) if p.text_rank else 0.0) for p in passages])
    relevance = v.w * cos + (1 - v.w) * fused / (fused.max() or 1.0)
    if v.code_bonus:
        wanted = codes_in(q.question)
        if wanted:
            relevance = relevance + v.code_bonus * np.array(
                [len(wanted & codes_in(f"{p.heading} {p.text}")) / len(wanted) for p in passages])
    order = sorted(range(len(ids)), key=lambda k: (-relevance[k], ids[k]))
    if not v.diversity:
        return [ids[k] for k in order[:DEPTH]]
    chosen: list[int] = []
    redundancy = np.full(len(ids), -np.inf)
    left = list(order)
    while left and len(chosen) < DEPTH:
        best = max(left, key=lambda k: relevance[k] - v.diversity * (redundancy[k] if chosen else 0.0))
        left.remove(best)
        chosen.append(best)
        redundancy = np.maximum(redundancy, emb @ emb[best])
    return [ids[k] for k in chosen]


# --- report -------------------------------------------------------------------------------------

def table(title: str, rows: list[tuple[str, dict[str, Score]]], baseline: str) -> None:
    """One line per method: hit@1, hit@5, MRR@10 and MRR/baseline on all questions, then MRR per group."""
    groups = [g for g in rows[0][1] if g != "all"]
    base = dict(rows)[baseline]["all"].mrr
    n = rows[0][1]["all"].n
    print(f"\n{title} (n={n})")
    head = "".join(f" {g + ' (' + str(rows[0][1][g].n) + ')':>15}" for g in groups)
    print(f"{'method':48} {'hit@1':>6} {'hit@5':>6} {'MRR@10':>7} {'/vector':>8}{head}")
    for label, scores in rows:
        s = scores["all"]
        per = "".join(f" {scores[g].mrr:15.3f}" for g in groups)
        print(f"{label:48} {s.hit1:6.3f} {s.hit5:6.3f} {s.mrr:7.3f} {s.mrr / base:7.2f}x{per}")


def grouped(ranks: dict[str, int | None], questions: list[Question], by: Callable[[Question], str]) -> dict[str, Score]:
    out = {"all": score([ranks[q.id] for q in questions])}
    for key in sorted({by(q) for q in questions}):
        out[key] = score([ranks[q.id] for q in questions if by(q) == key])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-tokens", type=int, default=256, help="the knowledge base's chunk size (default 256)")
    parser.add_argument("--overlap", type=int, default=32, help="the knowledge base's chunk overlap (default 32)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the tuning/held-out split (default 7)")
    parser.add_argument("--verbose", action="store_true", help="list each question's gold rank per method")
    args = parser.parse_args()
    prepare_stack()
    from django.conf import settings

    from deepseek_web.services.paths import data_dir

    settings.KNOWLEDGE_STORAGE_DIR = data_dir() / "bench-knowledge"  # not the files of `./dsw run`
    from knowledge.rerank import EmbeddingReranker, NoReranker
    from knowledge.retrieval import relevance_gate

    tenant_id, kb_id = ingest(args.chunk_tokens, args.overlap)
    chunks = load_chunks(tenant_id, kb_id)
    questions, cut = load_questions(chunks, args.seed)
    tokens = [c["token_count"] for c in chunks.values()]
    print(f"{len(chunks)} chunks (tokens: median {int(np.median(tokens))}, max {max(tokens)}); "
          f"{len(questions)} questions ({sum(q.lang == 'en' for q in questions)} en, "
          f"{sum(q.lang == 'zh' for q in questions)} zh); gold in 2 chunks (overlap): "
          f"{sum(len(q.gold) > 1 for q in questions)}")
    for q in cut:
        print(f"  left out {q.id}: no single chunk holds {q.answer!r} (a chunk boundary cuts it)")
    found = search_all(tenant_id, kb_id, questions)
    neighbours = neighbour_index(chunks)

    shipped = EmbeddingReranker()
    shipped_label = f"hybrid + EmbeddingReranker() [{shipped.name}]"
    methods: list[tuple[str, Method]] = [
        ("vector only (baseline)", lambda q, c: c.vector),
        ("full-text only", lambda q, c: c.text),
        ("hybrid (RRF)", lambda q, c: [p.chunk_id for p in c.hybrid]),
        ("hybrid + NoReranker", rerank_with(NoReranker())),
        ("hybrid + original reranker (cos .6, MMR .15)",
         rerank_with(EmbeddingReranker(similarity_weight=0.6, rank_constant=60, diversity=0.15))),
        (shipped_label, rerank_with(shipped)),
        (f"retrieve(): top {settings.KNOWLEDGE_TOP_K}, gate {settings.KNOWLEDGE_RELEVANCE_MARGIN}",
         lambda q, c: [p.chunk_id for p in c.retrieved]),
    ]
    ranks = {label: {q.id: rank_of(m(q, found[q.id]), q.gold) for q in questions} for label, m in methods}
    reachable = sum(bool(q.gold & {p.chunk_id for p in found[q.id].hybrid}) for q in questions) / len(questions)
    print(f"gold passage among the hybrid candidates (the most any reranker can reach): {reachable:.3f}")
    held = [q for q in questions if q.split == "held-out"]
    fresh = [q for q in questions if q.split == "fresh"]
    for title, subset in (("All questions", questions), ("Held-out half", held),
                          ("Fresh questions (written after the reranker was chosen)", fresh)):
        if subset:
            table(title, [(label, grouped(r, subset, lambda q: q.lang)) for label, r in ranks.items()],
                  "vector only (baseline)")
    untuned = held + fresh
    diff = np.array([rr(ranks[shipped_label][q.id]) - rr(ranks["hybrid (RRF)"][q.id]) for q in untuned])
    boot = np.random.default_rng(args.seed).choice(diff, size=(2000, len(diff))).mean(axis=1)
    print(f"\nMRR@10 of EmbeddingReranker() minus hybrid on the {len(untuned)} questions never tuned on (held-out +"
          f" fresh): {diff.mean():+.3f}, 95% paired bootstrap interval [{np.percentile(boot, 2.5):+.3f},"
          f" {np.percentile(boot, 97.5):+.3f}]; better on {int((diff > 0).sum())}, worse on {int((diff < 0).sum())}")
    table("All questions, MRR@10 by kind",
          [(label, grouped(r, questions, lambda q: q.kind)) for label, r in ranks.items()], "vector only (baseline)")

    # Variants: chosen on the tuning half, shown on the others.
    tune = [q for q in questions if q.split == "tune"]
    print(f"\nReranker variants, MRR@10 (tuning half n={len(tune)}, held-out half n={len(held)} with split seed "
          f"{args.seed}, fresh n={len(fresh)})")
    print(f"{'variant':52} {'tune':>6} {'held':>6} {'fresh':>6} {'all':>6} {'en':>6} {'zh':>6} {'hit@1':>6} {'hit@5':>6}")
    results = []
    for v in VARIANTS:
        r = {q.id: rank_of(run_variant(v, q, found[q.id], chunks, neighbours), q.gold) for q in questions}
        t, h, f, a = (score([r[q.id] for q in s]) for s in (tune, held, fresh, questions))
        en, zh = (score([r[q.id] for q in questions if q.lang == lang]) for lang in ("en", "zh"))
        results.append((v, t, h, r))
        print(f"{v.label:52} {t.mrr:6.3f} {h.mrr:6.3f} {f.mrr:6.3f} {a.mrr:6.3f} {en.mrr:6.3f} {zh.mrr:6.3f}"
              f" {a.hit1:6.3f} {a.hit5:6.3f}")
    best = max(results, key=lambda x: x[1].mrr)
    chosen = min((x for x in results if x[1].mrr >= best[1].mrr - TIE), key=lambda x: (x[0].parts, -x[1].mrr))
    print(f"chosen on the tuning half: {chosen[0].label} (tune MRR {chosen[1].mrr:.3f}; held-out MRR "
          f"{chosen[2].mrr:.3f}, hit@1 {chosen[2].hit1:.3f}, hit@5 {chosen[2].hit5:.3f})")
    shipped_ranks = ranks[shipped_label]
    same = sum(shipped_ranks[q.id] == chosen[3][q.id] for q in questions)
    print(f"EmbeddingReranker() as shipped gives the chosen variant's gold rank on {same}/{len(questions)} questions")

    # The relevance gate, on what retrieve() gates: the shipped reranker's top KNOWLEDGE_TOP_K.
    k = settings.KNOWLEDGE_TOP_K
    tops = {q.id: shipped.rerank(q.question, query_vector(q), copy.deepcopy(found[q.id].hybrid), k)
            for q in questions}
    before = [q for q in questions if q.gold & {p.chunk_id for p in tops[q.id]}]

    def spare_text_top(passages: list[Passage], margin: float) -> list[Passage]:
        """The gate, except that a passage the full-text search ranked in its top SPARE stays."""
        kept = {p.chunk_id for p in relevance_gate(passages, margin)}
        return [p for p in passages if p.chunk_id in kept or (p.text_rank is not None and p.text_rank <= SPARE)]

    print(f"\nRelevance gate on the reranked top {k} (gold there for {len(before)}/{len(questions)} questions);"
          f" 'spared': the same gate, keeping what full-text search ranked in its top {SPARE}")
    print(f"{'margin':>8} {'gold dropped':>13} {'en':>4} {'zh':>4} {'hit@5 after':>12} {'passages kept':>14}"
          f" {'spared: dropped':>16} {'kept':>5}")
    for margin in MARGINS:
        kept = {q.id: relevance_gate(tops[q.id], margin) if margin is not None else tops[q.id] for q in questions}
        spared = {q.id: spare_text_top(tops[q.id], margin) if margin is not None else tops[q.id] for q in questions}
        dropped = [q for q in before if not q.gold & {p.chunk_id for p in kept[q.id]}]
        dropped_spared = [q for q in before if not q.gold & {p.chunk_id for p in spared[q.id]}]
        per = {lang: sum(q.lang == lang for q in dropped) for lang in ("en", "zh")}
        shown = "none" if margin is None else f"{margin:.2f}"
        print(f"{shown:>8} {len(dropped):6d} ({len(dropped) / max(1, len(before)):4.1%}) {per['en']:4d} {per['zh']:4d}"
              f" {(len(before) - len(dropped)) / len(questions):12.3f} {np.mean([len(x) for x in kept.values()]):14.2f}"
              f" {len(dropped_spared):9d} ({len(dropped_spared) / max(1, len(before)):4.1%})"
              f" {np.mean([len(x) for x in spared.values()]):5.2f}")
        if args.verbose and dropped:
            print("          dropped: " + ", ".join(q.id for q in dropped))

    if args.verbose:
        print("\nGold rank per question (- = not in the top 10)")
        labels = list(ranks)
        for q in questions:
            shown = " ".join(f"{ranks[label][q.id] or '-':>2}" for label in labels)
            print(f"{q.id} {q.split:8} {q.kind:13} {shown}  {q.question}")


if __name__ == "__main__":
    main()
