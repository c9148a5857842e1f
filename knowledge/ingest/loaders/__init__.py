"""Turn a stored upload into structural blocks (headings, paragraphs, list items, tables, code).

`parse_file` picks the loader for the format; each format's loader is its own module. No Django here:
this runs inside the sandbox child (see `knowledge.ingest.sandbox`). The parser libraries are imported
inside each loader so the child only loads what the format needs.

Hostile input is handled in two layers. What can be checked cheaply and exactly happens before a
parser library sees the file (zip bombs, DTDs in OOXML, giant embedded images: `ooxml.py`). Whatever
slips past (a PDF that makes PDFium spin, a tree that balloons in lxml) is stopped by the sandbox's limits.
"""

from __future__ import annotations

from collections.abc import Callable

from knowledge.ingest.loaders.common import BlockCollector, inline_text
from knowledge.ingest.loaders.docx import parse_docx
from knowledge.ingest.loaders.html import parse_html
from knowledge.ingest.loaders.markdown import parse_markdown
from knowledge.ingest.loaders.pdf import parse_pdf
from knowledge.ingest.loaders.text import parse_csv, parse_txt
from knowledge.ingest.loaders.xlsx import parse_xlsx
from knowledge.ingest.types import IngestError, ParsedDocument

NO_TEXT = "No text could be extracted from this file (is it a scan? image OCR is not supported yet)."


def parse_file(path: str, fmt: str) -> ParsedDocument:
    """Parse the file at `path` (already sniffed as `fmt`) into blocks in reading order.

    Raises IngestError with a reason for the uploader when the file is hostile, damaged or has no text.
    """
    parsers: dict[str, Callable[[str, BlockCollector], str]] = {
        "pdf": parse_pdf,
        "docx": parse_docx,
        "xlsx": parse_xlsx,
        "html": parse_html,
        "md": parse_markdown,
        "txt": parse_txt,
        "csv": parse_csv,
    }
    if fmt not in parsers:
        raise IngestError(f"Unsupported format {fmt!r}.")
    collector = BlockCollector()
    title = parsers[fmt](path, collector)
    if not collector.blocks:
        raise IngestError(NO_TEXT)
    return ParsedDocument(blocks=collector.blocks, title=inline_text(title), warnings=collector.warnings)
