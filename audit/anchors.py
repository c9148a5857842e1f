"""Chain heads written outside the database at each verification, so a rolled-back head is caught.

Whoever controls the database itself (a superuser, with the triggers off) can delete the newest
events of a chain and write an older, authentic head back: the chain then verifies, since every
remaining event and the head carry valid MACs. So each scheduled verification (and `audit_verify`)
appends the heads it verified to a file outside the database (AUDIT_ANCHOR_FILE, opened
append-only; keep it on write-once storage or ship it) and logs them on the `audit.anchor` logger
(send it to syslog or a SIEM). Verification then checks each chain against its newest anchor: the
anchored event must still be there, with the same hash, unless retention pruned it.

Anchors name the database they were taken from, so a test database or a fresh installation never
reads another's. A database restored from a backup older than the newest anchor is reported as
missing events, which is true; start a new anchor file with the restore.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from django.conf import settings
from django.utils import timezone

logger = logging.getLogger("audit.anchor")


@dataclass(frozen=True)
class Anchor:
    chain: int
    seq: int
    hash: str
    at: str


def _database() -> str:
    return str(settings.DATABASES["default"]["NAME"])


def _path() -> Path:
    return Path(settings.AUDIT_ANCHOR_FILE)


def anchor_heads(heads: list[tuple[int, int, str]]) -> None:
    """Appends verified heads, (chain, seq, hash) each, to the anchor file and the anchor log."""
    if not heads:
        return
    at = timezone.now().isoformat()
    lines = [json.dumps({"db": _database(), "chain": chain, "seq": seq, "hash": hash_, "at": at},
                        sort_keys=True) for chain, seq, hash_ in heads]
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_APPEND: every write lands at the end, whatever else holds the file; nothing is rewritten.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, ("\n".join(lines) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    for line in lines:
        logger.info("%s", line)


class VerifiedChain(Protocol):
    """What anchoring needs of a verification report (audit.chain.ChainReport)."""

    @property
    def chain(self) -> int: ...

    @property
    def verified_upto(self) -> int: ...

    @property
    def head_hash(self) -> str: ...

    @property
    def ok(self) -> bool: ...


def anchor_verified(reports: Sequence[VerifiedChain]) -> None:
    """Anchors the heads of the chains that verified (an empty chain has nothing to anchor)."""
    anchor_heads([(r.chain, r.verified_upto, r.head_hash) for r in reports if r.ok and r.verified_upto > 0])


def newest_anchor(chain: int) -> Anchor | None:
    """The newest anchor of this chain in this database, or None."""
    path = _path()
    if not path.exists():
        return None
    database, newest = _database(), None
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash; the others still count
            if entry.get("db") != database or entry.get("chain") != chain:
                continue
            if newest is None or int(entry["seq"]) >= newest.seq:
                newest = Anchor(chain=chain, seq=int(entry["seq"]), hash=str(entry["hash"]), at=str(entry["at"]))
    return newest
