"""The parsing child's confinement (knowledge/ingest/isolation.py), seen from inside by a probe that runs
under the same `sandbox.confine` as the parser: another user, no network, nothing writable but its workdir.

No database. Needs root and unshare, as CI has; elsewhere the child degrades and says so (tested too).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from knowledge.ingest import isolation
from knowledge.ingest.sandbox import IMPORT_ROOT, parse_in_child
from knowledge.tests import samples

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the full confinement needs root")


@pytest.fixture
def outside() -> Iterator[Path]:
    """A world-writable folder outside /tmp, where the upload also lies: writable to anyone but the parser."""
    folder = Path(tempfile.mkdtemp(prefix="dsw-outside-", dir="/var/tmp"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def _probe(upload: Path, port: int, unix_socket: str, outside: Path) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-B", "-m", "knowledge.tests.sandbox_probe", str(upload), str(port), unix_socket,
         str(outside)],
        cwd=IMPORT_ROOT, capture_output=True, text=True, timeout=60, check=True,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(IMPORT_ROOT)},
    )
    report: dict[str, object] = json.loads(result.stdout)
    return report


@root_only
def test_it_runs_the_parser_as_nobody_without_network_or_writable_files(outside: Path) -> None:
    upload = outside / "upload.txt"
    upload.write_text("a question of trust\n")
    redis_socket = settings.REDIS_URL.removeprefix("unix://").split("?")[0]
    with socket.create_server(("127.0.0.1", 0)) as listener:
        report = _probe(upload, listener.getsockname()[1], redis_socket, outside)

    assert report["uid"] == report["euid"] == 65534 and report["groups"] == []
    assert report["no_new_privs"] == ["1"]
    assert report["tcp"] == "OSError: Network is unreachable"  # loopback included: no interface is up
    assert report["unix"] == "PermissionError: Permission denied"  # the test Redis, on its 0700 socket
    assert report["outside"] == "OSError: Read-only file system"
    assert not (outside / "written-by-the-parser").exists()
    # Its own copy of the upload, in a private workdir that it alone may write to (and that vanishes).
    assert (report["cwd"], report["path"], report["content"]) == ("/tmp", "/tmp/upload.txt", "a question of trust\n")
    assert report["workdir"] == "created"
    assert not Path("/tmp/scratch").exists()


@root_only
def test_it_still_parses_every_format_inside_the_sandbox(tmp_path: Path) -> None:
    path = samples.write_docx(tmp_path)
    document = parse_in_child(str(path), "docx")
    assert document.blocks


@root_only
def test_it_keeps_code_that_lives_under_the_workdir_importable(tmp_path: Path) -> None:
    # A checkout under /tmp (where the workdir's tmpfs goes) must stay visible to the child.
    checkout = tmp_path / "checkout"
    shutil.copytree(IMPORT_ROOT / "knowledge", checkout / "knowledge",
                    ignore=shutil.ignore_patterns("__pycache__", "tests"))
    upload = samples.write_md(tmp_path)
    result = subprocess.run(
        [sys.executable, "-B", "-m", "knowledge.ingest.sandbox", str(upload), "md", "1024", "30"],
        cwd=checkout, capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(checkout)},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["blocks"]


@root_only
def test_it_degrades_and_says_so_where_the_os_refuses_part_of_it(tmp_path: Path) -> None:
    # Root of a user namespace, as in a rootless container: `nobody` is not mapped there, so the
    # workdir (owned by nobody) and the user switch are refused; the parse still succeeds.
    upload = samples.write_md(tmp_path)
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, "-B", "-m", "knowledge.ingest.sandbox",
         str(upload), "md", "1024", "30"],
        cwd=IMPORT_ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(IMPORT_ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["blocks"]
    notes = [line for line in result.stderr.splitlines() if line.startswith(isolation.NOTE_PREFIX)]
    assert notes == [f"{isolation.NOTE_PREFIX}no mount namespace or workdir (mount /tmp: Invalid argument); "
                     "stays user 0"]


def test_it_logs_once_what_the_sandbox_could_not_do(caplog: pytest.LogCaptureFixture) -> None:
    confinement = isolation.Confinement(path="/x", missing=["no network namespace (Operation not permitted)"])
    stderr = "\n".join(isolation.note_lines(confinement)) + "\nTraceback: unrelated\n"
    with caplog.at_level(logging.WARNING, logger=isolation.__name__):
        isolation.log_notes(stderr)
        isolation.log_notes(stderr)
    assert [record.getMessage() for record in caplog.records] == [
        "parser sandbox degraded: no network namespace (Operation not permitted)"]
