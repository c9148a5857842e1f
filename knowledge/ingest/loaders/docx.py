"""Word documents: the body's paragraphs (headings by style or outline level, lists, code) and tables."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from knowledge.ingest.loaders.common import BlockCollector, library_error
from knowledge.ingest.loaders.ooxml import check_ooxml_package
from knowledge.ingest.types import BlockKind, IngestError

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_HEADING_STYLE = re.compile(r"heading\s*([1-9])", re.IGNORECASE)
_CODE_STYLES = frozenset({"html preformatted", "code", "source code", "macro text", "plain text"})


def parse_docx(path: str, out: BlockCollector) -> str:
    check_ooxml_package(path, "docx")
    import docx

    try:
        document = docx.Document(path)
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - python-docx raises anything from KeyError to XMLSyntaxError
        raise library_error("Word document", error) from None
    title = (document.core_properties.title or "").strip()
    first_title_style = ""
    try:
        for kind, payload, level in _docx_body(document):
            if kind == "table":
                assert isinstance(payload, list)
                out.add_table(payload)
                continue
            assert isinstance(payload, str)
            if kind == "heading" and level == 0:  # the "Title" style
                first_title_style = first_title_style or payload
                out.add("heading", payload, level=1)
            else:
                out.add(kind, payload, level=level)
    except (IngestError, MemoryError):
        raise
    except Exception as error:  # noqa: BLE001 - same: any library failure means a damaged document
        raise library_error("Word document", error) from None
    return title or first_title_style


def _docx_body(document: Any) -> Iterator[tuple[BlockKind, str | list[list[str]], int]]:
    """(kind, text or table rows, level) for the body's paragraphs and tables, in document order.

    The body XML is walked directly so tables stay between the paragraphs around them, and content
    controls (w:sdt) are looked into rather than skipped.
    """
    from docx.text.paragraph import Paragraph

    parent = document._body

    def walk(element: Any) -> Iterator[tuple[BlockKind, str | list[list[str]], int]]:
        for child in element.iterchildren():
            if child.tag == f"{_W}p":
                paragraph = Paragraph(child, parent)
                kind, level = _docx_paragraph_kind(paragraph)
                yield kind, paragraph.text, level
            elif child.tag == f"{_W}tbl":
                yield "table", _docx_table_rows(child, parent), 0
            elif child.tag == f"{_W}sdt":
                for content in child.iterchildren(f"{_W}sdtContent"):
                    yield from walk(content)

    yield from walk(document.element.body)


def _docx_paragraph_kind(paragraph: Any) -> tuple[BlockKind, int]:
    """Heading (level 1-6; level 0 marks the Title style), list item, code or plain paragraph."""
    names: list[str] = []
    style = paragraph.style
    for _ in range(10):  # follow "based on" so a custom style derived from Heading 2 still counts
        if style is None:
            break
        names.append((style.name or "").strip().lower())
        style = style.base_style
    for name in names:
        if name == "title":
            return "heading", 0
        match = _HEADING_STYLE.fullmatch(name)
        if match:
            return "heading", min(int(match.group(1)), 6)
    p_pr = paragraph._p.pPr
    outline = p_pr.find(f"{_W}outlineLvl") if p_pr is not None else None
    if outline is not None and (value := outline.get(f"{_W}val", "")).isdigit() and int(value) < 6:
        return "heading", int(value) + 1
    if any(name.startswith("list") for name in names) or (p_pr is not None and p_pr.numPr is not None):
        return "list", 0
    if names and names[0] in _CODE_STYLES:
        return "code", 0
    return "paragraph", 0


def _docx_table_rows(table: Any, parent: Any) -> list[list[str]]:
    # Cells read straight from w:tr/w:tc: python-docx's grid view repeats merged cells once per column.
    from docx.text.paragraph import Paragraph

    rows = []
    for tr in table.iterchildren(f"{_W}tr"):
        cells = []
        for tc in tr.iterchildren(f"{_W}tc"):
            cells.append(" ".join(Paragraph(p, parent).text for p in tc.iter(f"{_W}p")))
        rows.append(cells)
    return rows
