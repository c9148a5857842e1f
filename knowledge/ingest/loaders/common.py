"""What every format's loader shares: the block collector with its limits, and text clean-up.

Also the decoding of text formats (BOM, UTF-8, then a guess) and the mapping of a parser library's
failure to either a damaged-file reason or a MemoryError for the sandbox.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Sequence

from knowledge.ingest.types import Block, BlockKind, IngestError

# Everything a document yields travels back to the worker as one JSON string: cap it. 20 M characters is
# about 10,000 pages of dense text; the block cap bounds the per-block overhead of, say, a million rows.
MAX_TEXT_CHARS = 20_000_000
MAX_BLOCKS = 500_000

TABLE_BLOCK_ROWS = 50  # header included; each block of a long table repeats the header


class BlockCollector:
    """Accumulates blocks, dropping empty ones and enforcing the total text limit as it goes."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.warnings: list[str] = []
        self.chars = 0

    def add(self, kind: BlockKind, text: str, *, level: int = 0, page: int | None = None) -> None:
        if kind in ("code", "table"):
            text = multiline_text(text)
        elif kind == "heading":
            text = inline_text(text)
        else:
            # Line breaks the source meant (a <br>, a hard break, lines of a text file) are kept.
            text = "\n".join(line for line in map(inline_text, text.split("\n")) if line)
        if not text:
            return
        self.chars += len(text)
        if self.chars > MAX_TEXT_CHARS:
            raise IngestError(
                f"The document contains more than {MAX_TEXT_CHARS:,} characters of text; "
                "split it into smaller files."
            )
        if len(self.blocks) >= MAX_BLOCKS:
            raise IngestError(
                f"The document has more than {MAX_BLOCKS:,} paragraphs, rows and headings; "
                "split it into smaller files."
            )
        self.blocks.append(Block(kind=kind, text=text, level=level, page=page))

    def add_table(self, rows: Iterable[Sequence[str]], *, page: int | None = None) -> None:
        """Adds a table as blocks of at most TABLE_BLOCK_ROWS lines, each starting with the header row."""
        header: str | None = None
        lines: list[str] = []
        emitted = False
        for row in rows:
            cells = [inline_text(cell) for cell in row]
            while cells and not cells[-1]:
                cells.pop()
            if not cells:
                continue
            line = " | ".join(cells)
            if header is None:
                header = line
                continue
            lines.append(line)
            if len(lines) == TABLE_BLOCK_ROWS - 1:
                self.add("table", "\n".join([header, *lines]), page=page)
                lines = []
                emitted = True
        # A header-only table is still worth a block; a header after rows that filled the last block is not.
        if header is not None and (lines or not emitted):
            self.add("table", "\n".join([header, *lines]), page=page)


_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f\ufeff\ufffe\uffff]")


def inline_text(text: str) -> str:
    """Runs of whitespace (newlines included) become one space; control characters go."""
    return re.sub(r"\s+", " ", _CONTROL_CHARS.sub("", text)).strip()


def multiline_text(text: str) -> str:
    """Keeps line structure (code, tables, soft-wrapped text) but trims each line and the ends."""
    lines = [
        line.rstrip()
        for line in _CONTROL_CHARS.sub("", text.replace("\r\n", "\n").replace("\r", "\n")).split("\n")
    ]
    return "\n".join(lines).strip("\n")


def split_paragraphs(text: str) -> list[str]:
    """Splits plain text on blank lines (form feeds count as blank lines too)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    return [p for p in (multiline_text(chunk).strip() for chunk in re.split(r"\n[ \t]*\n", text)) if p]


def decode_text(data: bytes) -> str:
    """Bytes of a text format as str: BOM, else UTF-8, else charset-normalizer's best guess."""
    for bom, encoding in (
        (codecs.BOM_UTF32_LE, "utf-32-le"),
        (codecs.BOM_UTF32_BE, "utf-32-be"),
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(encoding)
            except UnicodeDecodeError as error:
                raise IngestError(f"The file is not valid {encoding.upper()} text: {error.reason}.") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    guessed = guess_encoding(data)
    if guessed is None:
        raise IngestError("The text encoding of this file could not be recognised.")
    return data.decode(guessed, errors="replace")


def guess_encoding(data: bytes) -> str | None:
    """charset-normalizer's guess, with ties broken in favour of Windows-1252.

    For Western European text it often rates cp1250/cp1257 exactly as plausible as cp1252 and picks one
    of them, turning "à" into "ŕ"; cp1252 is by far the more common legacy encoding. Central European text
    is unaffected: its bytes are implausible as cp1252, so cp1252 is not among the tied results.
    """
    from charset_normalizer import from_bytes

    results = from_bytes(data)
    best = results.best()
    if best is None:
        return None
    for match in results:
        if match.encoding == "cp1252" and (match.chaos, match.coherence) == (best.chaos, best.coherence):
            return "cp1252"
    return str(best.encoding)


def read_bytes(path: str) -> bytes:
    """The whole file: text formats are decoded (and their encoding guessed) from all of it."""
    with open(path, "rb") as handle:
        return handle.read()


def is_out_of_memory(error: BaseException) -> bool:
    """Whether a library error is really a failed allocation under the sandbox's memory limit.

    libxml2 (under lxml, python-docx, openpyxl) reports one as a parse error "unknown error" whose log
    entry says ERR_NO_MEMORY; the sandbox must see it as memory, not as a damaged file.
    """
    log = getattr(error, "error_log", None) or []
    if any(getattr(entry, "type_name", "") == "ERR_NO_MEMORY" for entry in log):
        return True
    return "memory" in str(error).lower()


def library_error(label: str, error: Exception) -> Exception:
    if is_out_of_memory(error):
        return MemoryError(str(error))
    message = str(error).strip() or type(error).__name__
    return IngestError(f"The {label} is damaged and cannot be read: {message}.")
