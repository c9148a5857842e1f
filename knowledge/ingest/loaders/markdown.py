"""Markdown (CommonMark with tables): headings, paragraphs, list items, code and tables; YAML front matter's
title is the document's."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from knowledge.ingest.loaders.common import BlockCollector, decode_text, read_bytes
from knowledge.ingest.loaders.html import html_fragment_text

if TYPE_CHECKING:
    from markdown_it.token import Token

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)


def parse_markdown(path: str, out: BlockCollector) -> str:
    from markdown_it import MarkdownIt

    text = decode_text(read_bytes(path)).replace("\r\n", "\n")
    title = ""
    front = _FRONT_MATTER.match(text)
    if front and re.search(r"^\w[\w-]*\s*:", front.group(1), re.MULTILINE):
        # YAML front matter would otherwise come out as a horizontal rule plus a setext heading.
        text = text[front.end() :]
        declared = re.search(r"^title\s*:\s*(.+)$", front.group(1), re.MULTILINE)
        if declared:
            title = declared.group(1).strip().strip("\"'")
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    list_depth = 0
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token.type == "list_item_open":
            list_depth += 1
        elif token.type == "list_item_close":
            list_depth -= 1
        elif token.type == "heading_open":
            level = int(token.tag[1:])
            heading = _markdown_inline_text(tokens[index + 1])
            if level == 1 and not title:
                title = heading
            out.add("heading", heading, level=level)
            index += 2
        elif token.type == "paragraph_open":
            out.add("list" if list_depth else "paragraph", _markdown_inline_text(tokens[index + 1]))
            index += 2
        elif token.type in ("fence", "code_block"):
            out.add("code", token.content)
        elif token.type == "html_block":
            out.add("paragraph", html_fragment_text(token.content))
        elif token.type == "table_open":
            rows: list[list[str]] = []
            while index < len(tokens) and tokens[index].type != "table_close":
                current = tokens[index]
                if current.type == "tr_open":
                    rows.append([])
                elif current.type == "inline" and rows:
                    rows[-1].append(_markdown_inline_text(current))
                index += 1
            out.add_table(rows)
        index += 1
    return title


def _markdown_inline_text(token: Token) -> str:
    parts: list[str] = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type == "softbreak":
            parts.append(" ")
        elif child.type == "hardbreak":
            parts.append("\n")
        elif child.type == "image":
            parts.append(child.content)  # the alt text
    return "".join(parts)
