"""Ingestion speed: end-to-end chunks per second, as a ratio to raw sentence-transformers encode throughput.

Corpus: --docs seeded documents (default 30, 1.6 MB) written to a temporary folder, in turn Markdown,
HTML, TXT, DOCX (python-docx) and PDF (`knowledge.tests.samples.write_pdf`): policy-handbook prose
with headings, lists and the odd table; about 1,700 chunks at the knowledge base defaults.

End-to-end: the workers run as `./dsw run` starts them (deepseek_web/cli.py: a `gpu` worker with
`-P threads -c 8`, which loads its models before it reports ready, and an `ingest` worker with
`-c 2`), as subprocesses with this process's settings. Four small warm-up documents go through the
whole pipeline first (the model's first calls, worker imports). Then every file is uploaded with
`documents_upload` to a fresh knowledge base, and the clock runs from the first upload to the last
document's `finished_at`.

Baseline: right after each end-to-end run (the workers idle), one `SentenceTransformer.encode` call
of the bundled MiniLM (`inference.engine.Embedder.load()`, loaded and warmed up before anything is
timed, normalised) over exactly the texts the run embedded (each stored chunk's heading + text, as
`document_embed` builds them), at batch 32 (sentence-transformers' default) and at the encoder batch
`document_embed` uses (--encode-batch; 16 on a CPU). One call over everything lets
sentence-transformers sort all texts by length, so it pads least: the strictest baseline.

It prints, per run and for the best of --repeat, chunks/s end-to-end and raw, the ratios (goal
>= 0.8), the encode rate shaped as `document_embed` does it (per document, KNOWLEDGE_EMBED_BATCH
chunks a call, no database), the documents' own timings (parse_ms, chunk_ms, embed_ms, total_ms,
and the wait from upload to parsing), and CPU seconds per process (gpu worker, ingest worker with
its parser children, PostgreSQL, this process) against the whole machine's, to show where the two
cores went and whether anything else was running.

Isolation: its own database `dsw_bench_ingest` and Redis database 3, not stack.py's `dsw_bench`
and 2: bench/retrieval_speed.py drops and rebuilds the HNSW index of `knowledge_chunk` in
`dsw_bench` (a lock that would stall every chunk write here for minutes), and bench/chat_latency.py
flushes Redis 2 and runs a `gpu` worker there that would take this bench's tasks. The machine has
2 cores: the load average is printed before, after each run and at the end; rerun when it is quiet
(the load during a run is this bench's own: ~8-10 threads of its workers).

Run:  .venv/bin/python bench/ingest_speed.py [--docs 30] [--seed 7] [--repeat 2] [--encode-batch 16]
(after `./dsw run` or `./dsw test` has installed the venv once).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("DSW_REDIS_DB", "3")  # before stack.py, which would pick 2 (see the docstring)

from stack import ROOT, prepare_stack  # after the environment above, which stack.py reads

DB_NAME = "dsw_bench_ingest"
os.environ["DB_NAME"] = DB_NAME  # stack.py set dsw_bench; Django reads it at setup, after this
TENANT_SLUG = "bench-ingest"
RAW_ENCODE_BATCH = 32  # sentence-transformers' and Embedder.embed's default
PIPELINE_ENCODE_BATCH = 16  # what document_embed passes on a CPU (see there); --encode-batch to change


# --- the corpus -----------------------------------------------------------------------------------

TOPICS = [
    "Travel", "Expenses", "Security", "Onboarding", "Data retention", "Procurement", "Incident response",
    "Parental leave", "Remote work", "Performance reviews", "Code of conduct", "Equipment", "Training",
    "Health and safety", "Customer data", "Vendor management", "Change management", "Access control",
    "Backups", "Holidays", "Sick leave", "Relocation", "Mentoring", "Office facilities", "Privacy",
]
SUBJECTS = [
    "Every employee", "The line manager", "The service desk", "Finance", "The security team", "HR",
    "A contractor", "The data owner", "Each team lead", "The on-call engineer", "The procurement office",
    "A new hire", "The legal department", "The facilities team", "Any staff member", "The project sponsor",
]
VERBS = [
    "must approve", "should review", "records", "may request", "is responsible for", "signs off",
    "must report", "keeps a copy of", "checks", "escalates", "archives", "updates", "confirms",
    "documents", "schedules", "reimburses",
]
OBJECTS = [
    "the expense report", "every purchase order above the limit", "the travel booking", "the access request",
    "the quarterly audit log", "the incident ticket", "the signed contract", "the laptop inventory",
    "the onboarding checklist", "the customer consent form", "the backup schedule", "the risk register",
    "the vendor assessment", "the training record", "the leave request", "the change request",
]
CONDITIONS = [
    "within five working days", "before the end of the month", "at least two weeks in advance",
    "as soon as possible", "before any payment is made", "once a quarter", "when the amount exceeds 500 EUR",
    "after every major release", "unless the regional policy says otherwise", "in the shared register",
    "through the HR portal", "by email to the service desk", "during the first week", "every twelve months",
]
ASIDES = [
    "Exceptions need written approval from a director.", "The policy applies to all offices.",
    "Questions go to the service desk on extension 4455.", "Late submissions are not reimbursed.",
    "Records are kept for seven years.", "Personal data is handled under the privacy policy.",
    "The checklist is on the intranet.", "Repeated breaches are reported to HR.",
]


def sentence(rng: random.Random) -> str:
    if rng.random() < 0.15:
        return rng.choice(ASIDES)
    text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(CONDITIONS)}"
    if rng.random() < 0.4:
        text += f", and {rng.choice(SUBJECTS).lower()} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
    return text + "."


def paragraph(rng: random.Random) -> str:
    return " ".join(sentence(rng) for _ in range(rng.randint(3, 8)))


Section = tuple[int, str, list[tuple[str, Any]]]  # (heading level, heading, [(kind, content)])


def document_outline(rng: random.Random, title: str) -> list[Section]:
    """A handbook chapter: level-2 sections, some with level-3 subsections; prose, lists, tables."""
    sections: list[Section] = [(1, title, [("p", paragraph(rng))])]
    for topic in rng.sample(TOPICS, rng.randint(8, 14)):
        for level, heading in [(2, topic)] + [(3, f"{topic}: {w}") for w in
                                              rng.sample(["scope", "process", "exceptions", "contacts"],
                                                         rng.randint(0, 2))]:
            body: list[tuple[str, Any]] = [("p", paragraph(rng)) for _ in range(rng.randint(2, 7))]
            if rng.random() < 0.3:
                body.insert(rng.randint(0, len(body)), ("ul", [sentence(rng) for _ in range(rng.randint(3, 6))]))
            if rng.random() < 0.15:
                rows = [["Item", "Limit", "Approver"]] + [
                    [rng.choice(OBJECTS), f"{rng.randint(1, 50) * 100} EUR", rng.choice(SUBJECTS)]
                    for _ in range(rng.randint(3, 8))]
                body.append(("table", rows))
            sections.append((level, heading, body))
    return sections


def as_markdown(outline: list[Section]) -> str:
    out = []
    for level, heading, body in outline:
        out.append("#" * level + " " + heading)
        for kind, content in body:
            if kind == "p":
                out.append(content)
            elif kind == "ul":
                out.append("\n".join(f"- {item}" for item in content))
            else:
                out.append("\n".join(["| " + " | ".join(content[0]) + " |", "|" + "---|" * len(content[0])]
                                     + ["| " + " | ".join(row) + " |" for row in content[1:]]))
    return "\n\n".join(out) + "\n"


def as_html(outline: list[Section]) -> str:
    from html import escape

    out = [f"<!doctype html><html><head><title>{escape(outline[0][1])}</title></head><body>"]
    for level, heading, body in outline:
        out.append(f"<h{level}>{escape(heading)}</h{level}>")
        for kind, content in body:
            if kind == "p":
                out.append(f"<p>{escape(content)}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in content) + "</ul>")
            else:
                out.append("<table>" + "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                                               for row in content) + "</table>")
    return "\n".join(out) + "</body></html>\n"


def as_text(outline: list[Section]) -> str:
    out = []
    for _, heading, body in outline:
        out.append(heading.upper())
        for kind, content in body:
            if kind == "p":
                out.append(content)
            elif kind == "ul":
                out.append("\n".join(f"* {item}" for item in content))
            else:
                out.append("\n".join("  ".join(row) for row in content))
    return "\n\n".join(out) + "\n"


def write_docx(path: Path, outline: list[Section]) -> None:
    import docx

    document = docx.Document()
    document.core_properties.title = outline[0][1]
    for level, heading, body in outline:
        document.add_heading(heading, level=level)
        for kind, content in body:
            if kind == "p":
                document.add_paragraph(content)
            elif kind == "ul":
                for item in content:
                    document.add_paragraph(item, style="List Bullet")
            else:
                table = document.add_table(rows=len(content), cols=len(content[0]))
                for r, row in enumerate(content):
                    for c, value in enumerate(row):
                        table.cell(r, c).text = value
    document.save(str(path))


def write_pdf(path: Path, outline: list[Section]) -> None:
    import textwrap

    from knowledge.tests.samples import write_pdf as write_text_pdf

    lines: list[str] = []
    for _, heading, body in outline:
        lines += ["", heading]
        for kind, content in body:
            items = [content] if kind == "p" else content if kind == "ul" else ["  ".join(r) for r in content]
            for item in items:
                lines += textwrap.wrap(item, 90) + [""]
    pages = ["\n".join(lines[i:i + 48]) for i in range(0, len(lines), 48)]
    write_text_pdf(path.parent, pages, name=path.name)


def write_corpus(folder: Path, docs: int, seed: int) -> list[Path]:
    rng = random.Random(seed)
    writers: list[tuple[str, Callable[[Path, list[Section]], object]]] = [
        ("md", lambda p, o: p.write_text(as_markdown(o))),
        ("html", lambda p, o: p.write_text(as_html(o))),
        ("txt", lambda p, o: p.write_text(as_text(o))),
        ("docx", write_docx),
        ("pdf", write_pdf),
    ]
    paths = []
    for n in range(docs):
        ext, write = writers[n % len(writers)]
        title = f"Handbook part {n + 1}: {rng.choice(TOPICS)}"
        path = folder / f"handbook-{n + 1:02d}.{ext}"
        write(path, document_outline(rng, title))
        paths.append(path)
    return paths


# --- the baseline ---------------------------------------------------------------------------------

def encode_rate(model: Any, texts: list[str], batch: int) -> float:
    """Chunks per second of one `SentenceTransformer.encode` call over all `texts`."""
    start = time.perf_counter()
    model.encode(texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True,
                 show_progress_bar=False)
    return len(texts) / (time.perf_counter() - start)


def pipeline_shaped_rate(model: Any, per_document: list[list[str]], db_batch: int, batch: int) -> float:
    """The same texts as `document_embed` encodes them: per document, db_batch at a time."""
    start = time.perf_counter()
    for texts in per_document:
        for i in range(0, len(texts), db_batch):
            model.encode(texts[i:i + db_batch], batch_size=batch, normalize_embeddings=True, convert_to_numpy=True,
                         show_progress_bar=False)
    return sum(map(len, per_document)) / (time.perf_counter() - start)


# --- CPU accounting -------------------------------------------------------------------------------

def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live descendants, plus what their reaped children used."""
    import psutil

    try:
        root = psutil.Process(pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            try:
                t = process.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return 0.0


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine, all processes (ours, PostgreSQL, anyone else's)."""
    import psutil

    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))


def postgres_cpu() -> tuple[dict[int, float], float]:
    """CPU seconds of the live PostgreSQL processes by pid, and what its exited backends used.

    Django closes its connection after every Celery task (CONN_MAX_AGE=0), so most backends of a
    run live for one task; the postmaster's children times hold them once they have exited.
    """
    import psutil

    live: dict[int, float] = {}
    reaped = 0.0
    for process in psutil.process_iter(["name", "ppid"]):
        if process.info["name"] != "postgres":
            continue
        try:
            t = process.cpu_times()
            parent = psutil.Process(process.info["ppid"]).name()
        except psutil.Error:
            continue
        live[process.pid] = t.user + t.system
        if parent != "postgres":  # the postmaster
            reaped = t.children_user + t.children_system
    return live, reaped


def postgres_cpu_since(before: tuple[dict[int, float], float]) -> float:
    live, reaped = postgres_cpu()
    return sum(cpu - before[0].get(pid, 0.0) for pid, cpu in live.items()) + reaped - before[1]


# --- the stack --------------------------------------------------------------------------------------

def prepare(storage_dir: Path) -> tuple[Any, Any]:
    """Services, the bench's own database, an empty Redis database 3; (tenant, user)."""
    os.environ["KNOWLEDGE_STORAGE_DIR"] = str(storage_dir)  # for this process and the workers
    from deepseek_web.services import paths, postgres

    data = paths.data_dir()
    postgres.ensure_postgres(data)
    postgres.ensure_roles(data)
    postgres.ensure_database(data, DB_NAME, owner=paths.PG_OWNER_ROLE)
    prepare_stack()
    from django.contrib.auth import get_user_model
    from django.db import connection

    from deepseek_web.redis_client import sync_client
    from knowledge.models import Chunk, KnowledgeBase
    from tenants.models import Tenant
    from tenants.rls import as_owner, tenant_context

    sync_client().flushdb()
    tenant, _ = Tenant.objects.get_or_create(slug=TENANT_SLUG, defaults={"name": "Bench ingest"})
    user, _ = get_user_model().objects.get_or_create(username="bench-ingest")
    with tenant_context(tenant.pk):  # what earlier runs left: their rows would sit in the HNSW graph
        Chunk.objects.filter(tenant_id=tenant.pk).delete()
        KnowledgeBase.objects.filter(tenant=tenant).delete()
    with as_owner(), connection.cursor() as cursor:
        cursor.execute("VACUUM knowledge_chunk")  # dead tuples out of the HNSW graph too
    return tenant, user


def start_workers(log: Any) -> list[subprocess.Popen[bytes]]:
    """The `gpu` and `ingest` workers with `./dsw run`'s options (deepseek_web/cli.py)."""
    from deepseek_web.celery import GPU_READY_KEY
    from deepseek_web.redis_client import sync_client

    sync_client().delete(GPU_READY_KEY)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    celery = [sys.executable, "-m", "celery", "-A", "deepseek_web", "worker"]
    workers = [
        subprocess.Popen(celery + ["-Q", "gpu", "-P", "threads", "-c", "8", "-n", "bench-gpu@%h",
                                   "--loglevel", "INFO"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
        subprocess.Popen(celery + ["-Q", "ingest", "-c", "2", "-n", "bench-ingest@%h", "--loglevel", "INFO"],
                         cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
    ]
    deadline = time.monotonic() + 300
    while not sync_client().exists(GPU_READY_KEY):
        if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
            stop_workers(workers)
            raise RuntimeError(f"the workers did not start; see {log.name}")
        time.sleep(0.2)
    return workers


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def upload_and_wait(tenant: Any, user: Any, name: str, files: dict[str, bytes],
                    timeout: float = 1800) -> tuple[float, list[Any]]:
    """Uploads `files` to a new knowledge base; (seconds from the first upload to the last finish, documents)."""
    from django.utils import timezone

    from audit.services import SYSTEM
    from knowledge.models import Document
    from knowledge.services.documents import documents_upload
    from knowledge.services.knowledge_bases import knowledge_base_create
    from tenants.rls import tenant_context

    with tenant_context(tenant.pk):
        kb = knowledge_base_create(tenant=tenant, name=name, actor=SYSTEM)
    uploads = []
    for filename, data in files.items():
        handle = io.BytesIO(data)
        handle.name = filename
        uploads.append(handle)
    started = timezone.now()
    outcomes = documents_upload(knowledge_base=kb, files=uploads, uploaded_by=user, actor=SYSTEM)
    if any(o.result != "queued" for o in outcomes):
        raise RuntimeError(f"not all uploads were queued: {[(o.document.name, o.message) for o in outcomes]}")
    ids = [o.document.pk for o in outcomes]
    deadline = time.monotonic() + timeout
    while True:
        with tenant_context(tenant.pk):
            documents = list(Document.objects.filter(pk__in=ids).order_by("name"))
        if all(d.status in (Document.Status.READY, Document.Status.FAILED) for d in documents):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("documents did not finish: " + ", ".join(f"{d.name} {d.status}" for d in documents))
        time.sleep(0.5)  # the finish time comes from finished_at; polling only has to notice it
    failed = [(d.name, d.error) for d in documents if d.status == Document.Status.FAILED]
    if failed:
        raise RuntimeError(f"documents failed: {failed}")
    finished = max(d.finished_at for d in documents if d.finished_at is not None)
    return (finished - started).total_seconds(), documents


def embedded_texts(tenant: Any, documents: list[Any]) -> list[list[str]]:
    """Per document, in ordinal order, the `embedding_text` of its chunks that have a vector."""
    from knowledge.models import Chunk
    from tenants.rls import tenant_context

    with tenant_context(tenant.pk):
        rows = (Chunk.objects.filter(document_id__in=[d.pk for d in documents]).exclude(embedding=None)
                .order_by("document_id", "ordinal").values_list("document_id", "heading", "text"))
        per_document: dict[int, list[str]] = {d.pk: [] for d in documents}
        for document_id, heading, text in rows:
            per_document[document_id].append(f"{heading}\n{text}" if heading else text)
    return list(per_document.values())


# --- main -------------------------------------------------------------------------------------------

def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=2,
                        help="end-to-end runs, each on a fresh knowledge base and followed by the raw encodes")
    parser.add_argument("--encode-batch", type=int, default=PIPELINE_ENCODE_BATCH,
                        help="the encoder batch document_embed uses (also measured raw, beside 32)")
    args = parser.parse_args()
    print(f"load average at start: {load()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        folder, storage_dir = Path(tmp) / "corpus", Path(tmp) / "storage"
        folder.mkdir()
        tenant, user = prepare(storage_dir)
        from django.conf import settings

        from inference.engine import Embedder

        paths = write_corpus(folder, args.docs, args.seed)
        files = {p.name: p.read_bytes() for p in paths}
        print(f"corpus: {len(paths)} documents ({', '.join(sorted({p.suffix for p in paths}))}), "
              f"{sum(map(len, files.values())) / 1e6:.1f} MB; KNOWLEDGE_EMBED_BATCH={settings.KNOWLEDGE_EMBED_BATCH}",
              flush=True)
        # Loaded and warmed before anything is timed, as the gpu worker loads its own at start.
        embedder = Embedder.load(settings.EMBEDDING_MODEL_PATH or None, device=settings.MODEL_DEVICE)
        warm_texts = [as_text(document_outline(random.Random(n), "Warm-up"))[:1500] for n in range(64)]
        embedder.model.encode(warm_texts, batch_size=RAW_ENCODE_BATCH, show_progress_bar=False)
        batches = sorted({RAW_ENCODE_BATCH, args.encode_batch}, reverse=True)

        log_path = ROOT / "var" / "bench-ingest-speed.log"
        runs: list[dict[str, Any]] = []
        per_document: list[list[str]] = []
        with open(log_path, "wb") as log:
            workers = start_workers(log)
            try:
                warm = {f"warm-{n}.md": f"# Warm-up {n}\n\n{paragraph(random.Random(n))}\n".encode()
                        for n in range(4)}
                upload_and_wait(tenant, user, f"warm-up {time.time():.0f}", warm)
                for n in range(args.repeat):
                    pg0 = postgres_cpu()
                    cpu0 = [tree_cpu(w.pid) for w in workers] + [time.process_time(), machine_cpu()]
                    seconds, documents = upload_and_wait(tenant, user, f"bench {n + 1} {time.time():.0f}", files)
                    cpu1 = [tree_cpu(w.pid) for w in workers] + [time.process_time(), machine_cpu()]
                    run: dict[str, Any] = {
                        "seconds": seconds, "documents": documents, "load": load(), "pg_cpu": postgres_cpu_since(pg0),
                        "cpu": [b - a for a, b in zip(cpu0, cpu1, strict=True)]}
                    texts_now = embedded_texts(tenant, documents)
                    if not per_document:
                        per_document = texts_now
                    elif texts_now != per_document:
                        raise RuntimeError("a run stored other chunks than the first one")
                    texts = [t for doc in per_document for t in doc]
                    if sum(d.chunk_count for d in documents) != len(texts):
                        raise RuntimeError("not every chunk got a vector")
                    run["chunks/s"] = len(texts) / seconds
                    # Right after the run, so both see the same machine; the workers are idle now.
                    run["raw"] = {b: encode_rate(embedder.model, texts, b) for b in batches}
                    runs.append(run)
                    print(f"run {n + 1}: end-to-end {seconds:6.1f} s = {run['chunks/s']:5.1f} chunks/s; raw encode "
                          + ", ".join(f"batch {b}: {r:5.1f} chunks/s" for b, r in run["raw"].items())
                          + f"  (load {run['load']})", flush=True)
            finally:
                stop_workers(workers)

        shaped = pipeline_shaped_rate(embedder.model, per_document, settings.KNOWLEDGE_EMBED_BATCH,
                                      args.encode_batch)
        best = max(runs, key=lambda r: r["chunks/s"])
        raw = {b: max(r["raw"][b] for r in runs) for b in batches}
        documents, seconds = best["documents"], best["seconds"]
        chunks = len(texts)
        print()
        print(f"documents {len(documents)}, chunks {chunks}; end-to-end {seconds:.1f} s (best of {len(runs)}): "
              f"{best['chunks/s']:.1f} chunks/s")
        for b in batches:
            label = "sentence-transformers' default" if b == RAW_ENCODE_BATCH else "the pipeline's encoder batch"
            print(f"raw encode, batch {b:2} ({label}): {raw[b]:5.1f} chunks/s (best of {len(runs)}) -> "
                  f"ratio end-to-end / raw {best['chunks/s'] / raw[b]:.2f}")
        print(f"goal: ratio >= 0.8.  Encoding shaped as document_embed does it (per document, "
              f"{settings.KNOWLEDGE_EMBED_BATCH} chunks a call, batch {args.encode_batch}), no database: "
              f"{shaped:.1f} chunks/s")
        print()
        print(f"{'per document, ms':18} {'median':>9} {'p95':>9} {'sum':>9}")
        for key in ("parse_ms", "chunk_ms", "embed_ms", "total_ms"):
            values = [d.timings.get(key, 0.0) for d in documents]
            print(f"{key:18} {statistics.median(values):9.0f} {percentile(values, 95):9.0f} "
                  f"{sum(values):9.0f}")
        wait = [(d.started_at - d.created_at).total_seconds() * 1000 for d in documents]
        print(f"{'upload -> parsing':18} {statistics.median(wait):9.0f} {percentile(wait, 95):9.0f}")
        gpu_cpu, ingest_cpu, bench_cpu, total_cpu = best["cpu"]
        rest = total_cpu - gpu_cpu - ingest_cpu - bench_cpu - best["pg_cpu"]
        print()
        print(f"CPU seconds in that run ({2 * seconds:.0f} available on 2 cores; whole machine {total_cpu:.1f}):")
        print(f"  gpu worker {gpu_cpu:.1f}, ingest worker with parsers {ingest_cpu:.1f}, PostgreSQL "
              f"{best['pg_cpu']:.1f}, this process {bench_cpu:.1f}, everything else {rest:.1f}")
        print(f"load average after that run: {best['load']}; at the end: {load()}")


if __name__ == "__main__":
    main()
