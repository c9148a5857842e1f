"""What the parsers hand to the chunker, and what the chunker hands to the pipeline.

Plain dataclasses with no Django: the parser runs in a child process and sends these back as JSON.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

BlockKind = Literal["heading", "paragraph", "list", "table", "code"]


@dataclass
class Block:
    """One structural unit of a document, in reading order."""

    kind: BlockKind
    text: str
    level: int = 0  # heading level 1..6; 0 for everything else
    page: int | None = None  # 1-based page (PDF) or sheet number (XLSX), when the format has one

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Block:
        return cls(**data)


@dataclass
class ParsedDocument:
    blocks: list[Block]
    title: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"blocks": [b.to_json() for b in self.blocks], "title": self.title, "warnings": self.warnings}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ParsedDocument:
        return cls(
            blocks=[Block.from_json(b) for b in data["blocks"]],
            title=data.get("title", ""),
            warnings=list(data.get("warnings", [])),
        )


def embedding_text(heading: str, text: str) -> str:
    """What a chunk's vector is computed from: its heading path, then its text."""
    return f"{heading}\n{text}" if heading else text


@dataclass
class ChunkDraft:
    """A chunk before it is stored: its text, where it sits in the document, and its hash."""

    ordinal: int
    text: str
    heading: str = ""  # the heading path above the chunk, e.g. "Benefits > Parental leave"
    token_count: int = 0
    page: int | None = None

    @property
    def content_hash(self) -> str:
        # The heading is part of what gets embedded (see `embedding_text`), so it is hashed too.
        return hashlib.sha256(self.embedding_text.encode()).hexdigest()

    @property
    def embedding_text(self) -> str:
        return embedding_text(self.heading, self.text)


class IngestError(Exception):
    """A document cannot be ingested. The message is shown to the admin and stored as is."""
