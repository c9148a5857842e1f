"""Plain text and CSV: decoded as text, split into paragraphs or read as one table."""

from __future__ import annotations

import csv
import io

from knowledge.ingest.loaders.common import BlockCollector, decode_text, read_bytes, split_paragraphs
from knowledge.ingest.types import IngestError


def parse_txt(path: str, out: BlockCollector) -> str:
    for paragraph in split_paragraphs(decode_text(read_bytes(path))):
        out.add("paragraph", paragraph)
    return ""


def parse_csv(path: str, out: BlockCollector) -> str:
    text = decode_text(read_bytes(path))
    sample = text[: 16 * 1024]
    dialect: type[csv.Dialect] | csv.Dialect
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel  # one column, or too irregular to guess: plain commas
    try:
        out.add_table(csv.reader(io.StringIO(text, newline=""), dialect))
    except csv.Error as error:
        raise IngestError(f"The CSV file is malformed: {error}.") from None
    return ""
