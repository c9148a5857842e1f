"""HTML pages: blocks in document order, with navigation, scripts and styles dropped."""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from knowledge.ingest.loaders.common import (
    BlockCollector,
    guess_encoding,
    inline_text,
    is_out_of_memory,
    read_bytes,
)
from knowledge.ingest.types import BlockKind, IngestError

if TYPE_CHECKING:
    from lxml.html import HtmlElement

_LINE_BREAK = "\u2028"
HTML_DROPPED_TAGS = ("script", "style", "nav", "noscript", "template", "svg", "head", "iframe", "object")
_HTML_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_HTML_INLINE = frozenset(
    ("a", "abbr", "b", "bdi", "bdo", "big", "br", "cite", "code", "data", "del", "dfn", "em", "font", "i")
    + ("img", "input", "ins", "kbd", "label", "mark", "q", "rp", "rt", "ruby", "s", "samp", "small", "span")
    + ("strike", "strong", "sub", "sup", "time", "tt", "u", "var", "wbr")
)


def parse_html(path: str, out: BlockCollector) -> str:
    import lxml.etree
    import lxml.html

    data = read_bytes(path)
    parser = lxml.html.HTMLParser(
        encoding=_html_encoding(data), remove_comments=True, remove_pis=True, no_network=True
    )
    try:
        root = lxml.html.document_fromstring(data, parser=parser)
    except lxml.etree.ParserError:
        return ""  # "Document is empty": whitespace or comments only, reported as no text
    except (lxml.etree.LxmlError, ValueError) as error:
        if is_out_of_memory(error):
            raise MemoryError(str(error)) from None
        raise IngestError(f"The HTML page could not be parsed: {error}.") from None
    title_element = root.find(".//title")
    title = title_element.text_content() if title_element is not None else ""
    for element in root.xpath("|".join(f"//{tag}" for tag in HTML_DROPPED_TAGS)):
        element.drop_tree()
    for br in root.iter("br"):
        # Marks the break so text_content() keeps it: a paragraph keeps it as a line break, a heading or a
        # table cell folds it into a space (\u2028 is whitespace to `inline_text`).
        br.tail = _LINE_BREAK + (br.tail or "")
    body = root.find("body")
    _HtmlWalker(out).walk(body if body is not None else root, "paragraph")
    return title


def _html_encoding(data: bytes) -> str:
    """UTF-8 when the bytes are UTF-8; else the page's own declaration; else a guess.

    libxml2 falls back to Latin-1 for pages without a charset, which garbles the (more common) UTF-8 ones.
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    declared = re.search(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", data[:4096], re.IGNORECASE)
    if declared:
        name = declared.group(1).decode("ascii")
        try:
            return codecs.lookup(name).name
        except LookupError:
            pass
    return guess_encoding(data) or "cp1252"


class _HtmlWalker:
    """Emits blocks in document order; loose inline text between blocks becomes a paragraph."""

    def __init__(self, out: BlockCollector) -> None:
        self.out = out
        self.buffer: list[str] = []

    def flush(self, kind: BlockKind) -> None:
        text = "\n".join(inline_text(line) for line in "".join(self.buffer).split(_LINE_BREAK))
        self.buffer = []
        if text:
            self.out.add(kind, text)

    def walk(self, element: HtmlElement, kind: BlockKind) -> None:
        self.buffer.append(element.text or "")
        for child in element.iterchildren():
            if not isinstance(child.tag, str):
                self.buffer.append(child.tail or "")
                continue
            self.visit(child, kind)
            self.buffer.append(child.tail or "")
        self.flush(kind)

    def visit(self, element: HtmlElement, kind: BlockKind) -> None:
        tag = element.tag.lower()
        if tag in _HTML_INLINE:
            self.buffer.append(element.text_content())
            return
        self.flush(kind)
        if tag in _HTML_HEADINGS:
            self.out.add("heading", element.text_content(), level=_HTML_HEADINGS[tag])
        elif tag == "pre":
            self.out.add("code", element.text_content().replace(_LINE_BREAK, "\n"))
        elif tag == "table":
            self.out.add_table(_html_table_rows(element))
        elif tag == "li":
            self.walk(element, "list")
        else:
            self.walk(element, kind)  # p, div, section, blockquote, ...: inherit the list context


def _html_table_rows(table: HtmlElement) -> Iterator[list[str]]:
    for row in table.iterchildren():
        if not isinstance(row.tag, str):
            continue
        if row.tag == "tr":
            yield [cell.text_content() for cell in row.iterchildren("th", "td")]
        elif row.tag in ("thead", "tbody", "tfoot"):
            yield from _html_table_rows(row)


def html_fragment_text(fragment: str) -> str:
    import lxml.etree
    import lxml.html

    try:
        element = lxml.html.fragment_fromstring(fragment, create_parent="div")
    except (lxml.etree.ParserError, ValueError):
        return ""
    for dropped in element.xpath("|".join(f".//{tag}" for tag in HTML_DROPPED_TAGS)):
        dropped.drop_tree()
    return str(element.text_content())
