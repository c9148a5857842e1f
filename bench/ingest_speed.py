"""Ingestion speed: end-to-end chunks per second, against raw sentence-transformers encode throughput.

Corpus: --docs seeded documents (default 30) written to a temporary folder, in turn Markdown, HTML,
TXT, DOCX (python-docx) and PDF (`knowledge.tests.samples.write_pdf`): policy-handbook prose with
headings, lists and the odd table; about 2,000 chunks at the knowledge base defaults (256 tokens,
32 overlap).

Baseline: `SentenceTransformer.encode` of the bundled MiniLM (`inference.engine.Embedder.load()`,
batch 32 as `Embedder.embed`, normalised) on exactly the texts the pipeline embeds: the files are
parsed and chunked here with the pipeline's own loader and chunker, and their `embedding_text` is
encoded in one call. It is measured before and after the end-to-end runs, in this process, after a
warm-up encode; the ratio uses the faster of the two, so a busy machine cannot flatter it. A second,
informational figure encodes the same texts shaped as `document_embed` sees them (per document, in
slices of KNOWLEDGE_EMBED_BATCH), to separate the cost of smaller batches from the rest.

End-to-end: the workers run as `./dsw run` starts them (deepseek_web/cli.py: a `gpu` worker with
`-P threads -c 8`, which loads its models before it reports ready, and an `ingest` worker with
`-c 2`), as subprocesses with this process's settings. A few small warm-up documents go through the
whole pipeline first (model first calls, worker imports, connections). Then every file is uploaded
with `documents_upload` to a fresh knowledge base, and the clock runs from the first upload to the
last document's `finished_at`. It prints chunks, documents, seconds, chunks/s, the ratio to the raw
encode rate (goal >= 0.8), the documents' own timings (parse_ms, chunk_ms, embed_ms, total_ms),
and CPU seconds per process (gpu worker, ingest worker with its parser children, this database's
PostgreSQL backends, sampled) against the machine's total, to show where the two cores went.

Isolation: its own database `dsw_bench_ingest` and Redis database 3, not stack.py's `dsw_bench`
and 2. bench/retrieval_speed.py drops and rebuilds the HNSW index of `knowledge_chunk` in
`dsw_bench` (a lock that would stall every chunk write here for minutes, and a partition of
thousands of rows that would slow HNSW inserts), and bench/chat_latency.py flushes Redis 2 and
runs its own `gpu` worker there, which would take this bench's tasks. The machine has 2 cores;
the load average is printed before and after: rerun when it is quiet.

Run:  .venv/bin/python bench/ingest_speed.py [--docs 30] [--seed 7] [--repeat 1]
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

from stack import ROOT, prepare_stack  # noqa: E402 - the environment above must come first

DB_NAME = "dsw_bench_ingest"
os.environ["DB_NAME"] = DB_NAME  # stack.py set dsw_bench; Django reads it at setup, after this
TENANT_SLUG = "bench-ingest"
ENCODE_BATCH = 32  # Embedder.embed's default, what document_embed uses


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
    writers: list[tuple[str, Callable[[Path, list[Section]], None]]] = [
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


def expected_chunks(paths: list[Path], max_tokens: int, overlap: int) -> list[list[str]]:
    """Per file, the `embedding_text` of its chunks, from the pipeline's own loader and chunker."""
    from django.conf import settings

    from knowledge.ingest.chunking import chunk_document, token_counter
    from knowledge.ingest.formats import detect_format
    from knowledge.ingest.loaders import parse_file

    counter = token_counter(settings.EMBEDDING_MODEL_PATH or None)
    result = []
    for path in paths:
        parsed = parse_file(str(path), detect_format(path.name, path.read_bytes()[:8192]))
        drafts = chunk_document(parsed, max_tokens=max_tokens, overlap_tokens=overlap, counter=counter)
        result.append([d.embedding_text for d in drafts])
    return result


# --- the baseline ---------------------------------------------------------------------------------

def encode_rate(model: Any, texts: list[str]) -> tuple[float, float]:
    """(chunks per second, CPU seconds this process used) for one encode of all `texts`."""
    start, cpu = time.perf_counter(), time.process_time()
    model.encode(texts, batch_size=ENCODE_BATCH, normalize_embeddings=True, convert_to_numpy=True,
                 show_progress_bar=False)
    return len(texts) / (time.perf_counter() - start), time.process_time() - cpu


def pipeline_shaped_rate(embedder: Any, per_document: list[list[str]], db_batch: int) -> float:
    """The same texts as `document_embed` hands them to the embedder: per document, db_batch at a time."""
    start = time.perf_counter()
    for texts in per_document:
        for i in range(0, len(texts), db_batch):
            embedder.embed(texts[i:i + db_batch])
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
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


class BackendSampler:
    """CPU seconds of this database's PostgreSQL backends, sampled by pid (short-lived ones are missed)."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}
        self.base: dict[int, float] = {}

    def sample(self) -> None:
        import psutil

        for process in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            if cmdline.startswith("postgres:") and f" {DB_NAME} " in cmdline:
                try:
                    t = process.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                self.seen[process.pid] = t.user + t.system

    def start(self) -> None:
        self.sample()
        self.base = dict(self.seen)

    def total(self) -> float:
        return sum(cpu - self.base.get(pid, 0.0) for pid, cpu in self.seen.items())


# --- the stack --------------------------------------------------------------------------------------

def prepare(storage_dir: Path) -> tuple[Any, Any]:
    """Services, the bench's own database, an empty Redis database 3; (tenant, user)."""
    os.environ["KNOWLEDGE_STORAGE_DIR"] = str(storage_dir)  # for this process and the workers
    from deepseek_web.services import embedded

    data = embedded.data_dir()
    embedded.ensure_postgres(data)
    embedded.ensure_roles(data)
    embedded.ensure_database(data, DB_NAME, owner=embedded.PG_OWNER_ROLE)
    prepare_stack()
    from django.contrib.auth import get_user_model
    from django.db import connection

    from chat.streams import sync_client
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
    from chat.streams import sync_client
    from deepseek_web.celery import GPU_READY_KEY

    sync_client().delete(GPU_READY_KEY)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    celery = [sys.executable, "-m", "celery", "-A", "deepseek_web", "worker"]
    workers = [
        subprocess.Popen(celery + ["-Q", "gpu", "-P", "threads", "-c", "8", "-n", "bench-gpu@%h", "--loglevel", "INFO"],
                         cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
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
                    on_poll: Callable[[], None] = lambda: None, timeout: float = 1800) -> tuple[float, list[Any]]:
    """Uploads `files` to a new knowledge base; (seconds from the first upload to the last finish, documents)."""
    from django.utils import timezone

    from audit.services import SYSTEM
    from knowledge import services
    from knowledge.models import Document
    from tenants.rls import tenant_context

    with tenant_context(tenant.pk):
        kb = services.knowledge_base_create(tenant=tenant, name=name, actor=SYSTEM)
    uploads = []
    for filename, data in files.items():
        handle = io.BytesIO(data)
        handle.name = filename
        uploads.append(handle)
    started = timezone.now()
    outcomes = services.documents_upload(knowledge_base=kb, files=uploads, uploaded_by=user, actor=SYSTEM)
    if any(o.outcome != "queued" for o in outcomes):
        raise RuntimeError(f"not all uploads were queued: {[(o.document.name, o.message) for o in outcomes]}")
    ids = [o.document.pk for o in outcomes]
    deadline = time.monotonic() + timeout
    while True:
        on_poll()
        with tenant_context(tenant.pk):
            documents = list(Document.objects.filter(pk__in=ids))
        if all(d.status in (Document.Status.READY, Document.Status.FAILED) for d in documents):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("documents did not finish: " + ", ".join(f"{d.name} {d.status}" for d in documents))
        time.sleep(0.2)
    failed = [(d.name, d.error) for d in documents if d.status == Document.Status.FAILED]
    if failed:
        raise RuntimeError(f"documents failed: {failed}")
    return (max(d.finished_at for d in documents) - started).total_seconds(), documents


def stored_embedding_texts(tenant: Any, documents: list[Any]) -> list[str]:
    from knowledge.models import Chunk
    from tenants.rls import tenant_context

    with tenant_context(tenant.pk):
        rows = Chunk.objects.filter(document_id__in=[d.pk for d in documents]).values_list("heading", "text", "embedding_dim")
        texts = [f"{h}\n{t}" if h else t for h, t, dim in rows if dim]
    return texts


# --- main -------------------------------------------------------------------------------------------

def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1, help="end-to-end runs (each on a fresh knowledge base)")
    args = parser.parse_args()
    print(f"load average at start: {load()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        folder, storage_dir = Path(tmp) / "corpus", Path(tmp) / "storage"
        folder.mkdir()
        tenant, user = prepare(storage_dir)
        from django.conf import settings

        from inference.engine import Embedder
        from knowledge.models import KnowledgeBase

        paths = write_corpus(folder, args.docs, args.seed)
        files = {p.name: p.read_bytes() for p in paths}
        defaults = {f.name: f.get_default() for f in KnowledgeBase._meta.get_fields()
                    if f.name in ("chunk_max_tokens", "chunk_overlap_tokens")}
        per_document = expected_chunks(paths, defaults["chunk_max_tokens"], defaults["chunk_overlap_tokens"])
        texts = [t for doc in per_document for t in doc]
        formats = sorted({p.suffix for p in paths})
        print(f"corpus: {len(paths)} documents ({', '.join(formats)}), {sum(map(len, files.values())) / 1e6:.1f} MB, "
              f"{len(texts)} chunks ({defaults['chunk_max_tokens']} tokens max, "
              f"{defaults['chunk_overlap_tokens']} overlap), KNOWLEDGE_EMBED_BATCH={settings.KNOWLEDGE_EMBED_BATCH}")

        import torch

        embedder = Embedder.load(settings.EMBEDDING_MODEL_PATH or None, device=settings.MODEL_DEVICE)
        embedder.model.encode(texts[:64], batch_size=ENCODE_BATCH, show_progress_bar=False)  # warm-up
        print(f"raw encode (this process, {torch.get_num_threads()} torch threads, batch {ENCODE_BATCH}):", flush=True)
        raw_before, raw_cpu = encode_rate(embedder.model, texts)
        print(f"  before: {raw_before:8.1f} chunks/s   (load {load()})", flush=True)
        shaped = pipeline_shaped_rate(embedder, per_document, settings.KNOWLEDGE_EMBED_BATCH)
        print(f"  shaped as document_embed (per document, {settings.KNOWLEDGE_EMBED_BATCH} at a time): "
              f"{shaped:8.1f} chunks/s", flush=True)

        log_path = ROOT / "var" / "bench-ingest-speed.log"
        with open(log_path, "wb") as log:
            workers = start_workers(log)
            try:
                warm = {f"warm-{n}.md": f"# Warm-up {n}\n\n{paragraph(random.Random(n))}\n".encode() for n in range(4)}
                upload_and_wait(tenant, user, "warm-up", warm)
                runs = []
                for run in range(args.repeat):
                    sampler = BackendSampler()
                    sampler.start()
                    cpu0 = [tree_cpu(w.pid) for w in workers] + [machine_cpu()]
                    seconds, documents = upload_and_wait(tenant, user, f"bench {run + 1} {time.time():.0f}", files,
                                                         on_poll=sampler.sample)
                    cpu1 = [tree_cpu(w.pid) for w in workers] + [machine_cpu()]
                    sampler.sample()
                    runs.append((seconds, documents, [b - a for a, b in zip(cpu0, cpu1, strict=True)],
                                 sampler.total(), load()))
                    print(f"  end-to-end run {run + 1}: {seconds:.1f} s, {len(texts) / seconds:.1f} chunks/s "
                          f"(load {load()})", flush=True)
            finally:
                stop_workers(workers)

        raw_after, _ = encode_rate(embedder.model, texts)
        print(f"  raw encode after: {raw_after:8.1f} chunks/s   (load {load()})")
        raw = max(raw_before, raw_after)

        seconds, documents, cpu, pg_cpu, run_load = min(runs, key=lambda r: r[0])
        stored = stored_embedding_texts(tenant, documents)
        same = sorted(stored) == sorted(texts)
        chunks = sum(d.chunk_count for d in documents)
        rate = chunks / seconds
        print()
        print(f"documents {len(documents)}, chunks {chunks} (stored and embedded: {len(stored)}; "
              f"same texts as the baseline: {'yes' if same else 'NO'})")
        print(f"end-to-end {seconds:.1f} s{' (best of %d)' % len(runs) if len(runs) > 1 else ''}: "
              f"{rate:.1f} chunks/s")
        print(f"raw encode {raw:.1f} chunks/s (before {raw_before:.1f}, after {raw_after:.1f}); "
              f"shaped as document_embed {shaped:.1f}")
        print(f"ratio end-to-end / raw encode: {rate / raw:.2f}  (goal >= 0.8)")
        print()
        print(f"{'per document, ms':18} {'median':>9} {'p95':>9} {'sum':>9}")
        for key in ("parse_ms", "chunk_ms", "embed_ms", "total_ms"):
            values = sorted(d.timings.get(key, 0.0) for d in documents)
            print(f"{key:18} {statistics.median(values):9.0f} {values[int(0.95 * (len(values) - 1))]:9.0f} "
                  f"{sum(values):9.0f}")
        wait = sorted((d.started_at - d.created_at).total_seconds() * 1000 for d in documents)
        print(f"{'queued -> parsing':18} {statistics.median(wait):9.0f} {wait[int(0.95 * (len(wait) - 1))]:9.0f}")
        gpu_cpu, ingest_cpu, total_cpu = cpu
        print()
        print(f"CPU seconds during the run ({2 * seconds:.0f} available on 2 cores; load after: {run_load}):")
        print(f"  gpu worker {gpu_cpu:.1f}, ingest worker + parsers {ingest_cpu:.1f}, "
              f"PostgreSQL backends of {DB_NAME} ~{pg_cpu:.1f}, whole machine {total_cpu:.1f} "
              f"(other {total_cpu - gpu_cpu - ingest_cpu - pg_cpu:.1f})")
        print(f"  raw encode of the same chunks used {raw_cpu:.1f} CPU s in {len(texts) / raw_before:.1f} s")
        print(f"load average at end: {load()}")


if __name__ == "__main__":
    main()
