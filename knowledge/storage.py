"""Where uploaded and fetched files are kept: KNOWLEDGE_STORAGE_DIR/<tenant>/<generated name>.

A stored file never takes its name from the user, so no name can reach outside this folder.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from knowledge.ingest.formats import HEAD_BYTES


@dataclass
class StoredFile:
    name: str  # the generated name, relative to the storage root
    size: int
    sha256: str
    head: bytes  # the first bytes, for sniffing the format


class TooLarge(Exception):
    pass


def root() -> Path:
    return Path(settings.KNOWLEDGE_STORAGE_DIR)


def path_of(name: str) -> Path:
    path = (root() / name).resolve()
    # Generated names only; refuse anything else that might have found its way into the row.
    if root().resolve() not in path.parents:
        raise ValueError(f"stored name outside the storage folder: {name!r}")
    return path


def store(tenant_id: int, pieces: Iterable[bytes], *, limit: int) -> StoredFile:
    """Writes the bytes under a new generated name, hashing as it goes; stops past `limit` bytes."""
    name = f"{int(tenant_id)}/{uuid.uuid4().hex}"
    path = root() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    head = b""
    try:
        # O_EXCL: never write through an existing file or link.
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            for piece in pieces:
                size += len(piece)
                if size > limit:
                    raise TooLarge
                if len(head) < HEAD_BYTES:
                    head += piece[: HEAD_BYTES - len(head)]
                digest.update(piece)
                out.write(piece)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return StoredFile(name=name, size=size, sha256=digest.hexdigest(), head=head)


def delete(name: str) -> None:
    if name:
        path_of(name).unlink(missing_ok=True)
