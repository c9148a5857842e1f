"""Outsider sweep, part 3: hostile uploads through the real upload endpoints.

A knowledge admin of tenant A sends each hostile file on its own, with its name exactly as a client
can send it (Django's test client would strip the directories first), through the upload page and
through the REST API: a zip bomb, a malformed PDF, a truncated DOCX, a path-traversal name, files
whose extension lies, a file over the configured size cap, and names with NUL bytes. Queued files
then go through the real pipeline (parsing in the sandboxed child). Each one must end in a 4xx or
a failed document with its reason, except where the only hostile part is the name and the product
cleans it (the cleaned name is then checked); the knowledge base's good document must stay ready,
unchanged and searchable, and nothing may be written outside the storage folder.

The hostile files are knowledge/tests/samples.py's; the pipeline's own test
(knowledge/tests/test_pipeline.py) runs them through the service, this one through HTTP.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.urls import reverse

from inference import runtime
from knowledge import storage
from knowledge.models import Chunk, Document
from knowledge.retrieval import retrieve
from knowledge.selectors import embedding_model_id
from knowledge.tests import samples
from tenants.models import Role
from tenants.rls import tenant_context
from tests.outsider_sweep import (
    Ledger,
    document_settle,
    multipart,
    off_the_event_loop,
    run_token,
    session_client,
    tenantry_build,
)

pytestmark = pytest.mark.django_db(transaction=True)

# Names whose only hostile part is the name: the product keeps the file under a cleaned name.
CLEANED = {"../../x.md": "x.md", "evil\x00name.md": "evilname.md"}


def _hostile_files(tmp_path: Path, salt: str) -> list[tuple[str, bytes]]:
    """The files; `salt` makes the texts differ per endpoint, so no upload is a no-op re-upload."""
    docx = samples.write_docx(tmp_path).read_bytes()
    salted = salt.encode()
    return [
        ("bomb.xlsx", samples.write_zip_bomb_xlsx(tmp_path).read_bytes()),  # ~1000:1, past the ratio limit
        ("corrupt.pdf", samples.write_corrupt_pdf(tmp_path).read_bytes()),
        ("truncated.docx", docx[: len(docx) // 2]),
        ("../../x", b"plain text behind a path-traversal name without an extension " + salted),
        ("../../x.md", b"# Escaped\n\nA path-traversal name with an extension, " + salted),
        ("photo.pdf", samples.write_png_named_pdf(tmp_path).read_bytes()),  # a PNG that says it is a PDF
        ("notes.txt", b"\x7fELF\x02\x01\x01" + bytes(200)),  # an executable that says it is text
        ("big.txt", b"word " * (300 * 1024)),  # 1.5 MB, over the 1 MB cap set below
        ("evil\x00name.md", b"# NUL\n\nA NUL byte in the file name, " + salted),
        ("\x00.md", b"# Only a NUL\n\nNothing is left of this name but its extension, " + salted),
    ]


def _rows(kb_id: int, tenant_id: int) -> dict[int, tuple[str, int, str, str]]:
    with tenant_context(tenant_id):
        return {d.pk: (d.status, d.version, d.error, d.name)
                for d in Document.objects.filter(knowledge_base_id=kb_id)}


def _search(side, kb_id: int, query: str) -> list[int]:
    with tenant_context(side.tenant.pk):
        passages = retrieve(tenant_id=side.tenant.pk, knowledge_base_ids=[kb_id], query=query,
                            embedding=runtime.get_embedder().embed([query])[0], model=embedding_model_id())
    return [p.document_id for p in passages]


@off_the_event_loop
def test_it_refuses_every_hostile_upload_and_keeps_the_other_documents(transactional_db, settings, tmp_path) -> None:
    settings.KNOWLEDGE_MAX_FILE_MB = 1
    a = tenantry_build(f"aside{run_token()}")
    kb_id, good_id = a.ids["knowledge_base_id"][0], a.ids["document_id"][0]
    with tenant_context(a.tenant.pk):
        good_chunks = sorted(Chunk.objects.filter(document_id=good_id).values_list("pk", "content_hash"))
    query = "How many weeks of paid parental leave do parents get?"
    assert good_id in _search(a, kb_id, query)
    stray = [Path.cwd() / "x", Path.cwd() / "x.md", storage.root().parent / "x", storage.root().parent / "x.md"]
    assert not any(p.exists() for p in stray)

    ledger = Ledger("uploads: hostile files through the upload page and the REST API", "bad_outcomes")
    client = session_client(a.users[Role.KNOWLEDGE_ADMIN])
    touched: dict[int, str] = {}  # document id -> the name it was uploaded as
    answers: list[tuple[str, str, int, list[int]]] = []
    endpoints = {"page": reverse("knowledge:document_upload", args=[kb_id]),
                 "api": reverse("api:document_list", args=[kb_id])}
    for endpoint, url in endpoints.items():
        for name, data in _hostile_files(tmp_path, endpoint):
            before = _rows(kb_id, a.tenant.pk)
            body, content_type = multipart([(name, data)])
            response = client.post(url, body, content_type=content_type)
            ledger.record(response)
            after = _rows(kb_id, a.tenant.pk)
            # A new row, or a new version of one: the pipeline (a gpu worker in this process may be
            # ingesting the files before) changes statuses, never versions.
            new = [pk for pk, row in after.items() if pk not in before or before[pk][1] != row[1]]
            if 400 <= response.status_code < 500:
                # Refused; the row it may leave says which file and why (checked below with the rest).
                ledger.count("refused_4xx")
            elif response.status_code >= 300 or len(new) != 1:
                ledger.findings.append(f"{endpoint} {name!r}: {response.status_code}, documents changed: {new}")
            touched |= dict.fromkeys(new, name)
            answers.append((endpoint, name, response.status_code, new))
        # Whatever was queued goes through the real pipeline now, the sandboxed parser included.
        with tenant_context(a.tenant.pk):
            pending = list(Document.objects.filter(pk__in=list(touched)).exclude(status__in=["ready", "failed"]))
        for document in pending:
            document_settle(document)
    final = _rows(kb_id, a.tenant.pk)
    for endpoint, name, status_code, new in answers:
        outcome = "; ".join(f"{final[pk][3]!r} {final[pk][0]}: {final[pk][2][:90]}" for pk in new)
        ledger.notes.append(f"{endpoint} {name!r}: HTTP {status_code}; {outcome or 'no document'}")
    for pk, name in touched.items():
        status, _, error, stored_as = final[pk]
        if name in CLEANED:
            if stored_as != CLEANED[name] or status == "failed":
                ledger.findings.append(f"{name!r} became {stored_as!r} ({status}: {error})")
            else:
                ledger.count("kept_under_a_cleaned_name")
        elif status != "failed" or not error.strip():
            ledger.findings.append(f"{name!r} is {status} with reason {error!r}")
        else:
            ledger.count("failed_with_a_reason")
    # The good document is as it was, and still found.
    with tenant_context(a.tenant.pk):
        good = Document.objects.get(pk=good_id)
        chunks = sorted(Chunk.objects.filter(document_id=good_id).values_list("pk", "content_hash"))
    if good.status != "ready" or chunks != good_chunks:
        ledger.findings.append(f"the good document changed: {good.status}, {len(chunks)} chunks")
    if good_id not in _search(a, kb_id, query):
        ledger.findings.append("the good document is no longer found")
    # Stored files have generated names in the tenant's folder, and nothing landed anywhere else.
    names = [p.relative_to(storage.root()).as_posix() for p in storage.root().rglob("*") if p.is_file()]
    for stored in names:
        folder, _, file_name = stored.partition("/")
        if not (folder.isdigit() and len(file_name) == 32 and file_name.isalnum()):
            ledger.findings.append(f"a stored file with a name not generated by us: {stored!r}")
    ledger.findings += [f"a file was written at {p}" for p in stray if p.exists()]
    ledger.extra["documents_checked"] = len(touched)
    ledger.report()
    assert ledger.attempts == 20
    assert not ledger.findings, "\n".join(ledger.findings)
    assert os.path.isdir(storage.root())
