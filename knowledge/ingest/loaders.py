"""Turn a stored upload into structural blocks (headings, paragraphs, list items, tables, code).

No Django here: this runs inside the sandbox child (see `sandbox.py`). The parser libraries are imported
inside the function for their format so the child only loads what it needs.

Hostile input is handled in two layers. What can be checked cheaply and exactly happens here, before a
parser library sees the file (zip bombs, DTDs in OOXML, giant embedded images). Whatever slips past
(a PDF that makes PDFium spin, a tree that balloons in lxml) is stopped by the sandbox's limits.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import re
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from knowledge.ingest.formats import FORMAT_LABELS
from knowledge.ingest.types import Block, BlockKind, IngestError, ParsedDocument

if TYPE_CHECKING:
    from lxml.html import HtmlElement
    from markdown_it.token import Token

MIB = 1024 * 1024

# OOXML zip limits. Real documents are far below them; a zip bomb is far above.
MAX_OOXML_UNPACKED = 256 * MIB
MAX_OOXML_RATIO = 200
RATIO_CHECK_MIN_SIZE = 1 * MIB  # tiny parts (XML boilerplate) legitimately compress very well
MAX_OOXML_ENTRIES = 10_000
MAX_IMAGE_PIXELS = 64_000_000

# Everything a document yields travels back to the worker as one JSON string: cap it. 20 M characters is
# about 10,000 pages of dense text; the block cap bounds the per-block overhead of, say, a million rows.
MAX_TEXT_CHARS = 20_000_000
MAX_BLOCKS = 500_000

TABLE_BLOCK_ROWS = 50  # header included; each block of a long table repeats the header
NO_TEXT = "No text could be extracted from this file (is it a scan? image OCR is not supported yet)."

_OOXML_LABEL = {"docx": "Word document", "xlsx": "Excel workbook"}
_OOXML_FOLDER = {"docx": "word/", "xlsx": "xl/"}


def parse_file(path: str, fmt: str) -> ParsedDocument:
    """Parse the file at `path` (already sniffed as `fmt`) into blocks in reading order.

    Raises IngestError with a reason for the uploader when the file is hostile, damaged or has no text.
    """
    parsers: dict[str, Callable[[str, _Collector], str]] = {
        "pdf": _parse_pdf,
        "docx": _parse_docx,
        "xlsx": _parse_xlsx,
        "html": _parse_html,
        "md": _parse_markdown,
        "txt": _parse_txt,
        "csv": _parse_csv,
    }
    if fmt not in parsers:
        raise IngestError(f"Unsupported format {fmt!r}.")
    collector = _Collector()
    title = parsers[fmt](path, collector)
    if not collector.blocks:
        raise IngestError(NO_TEXT)
    return ParsedDocument(blocks=collector.blocks, title=_inline(title), warnings=collector.warnings)


class _Collector:
    """Accumulates blocks, dropping empty ones and enforcing the total text limit as it goes."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.warnings: list[str] = []
        self.chars = 0

    def add(self, kind: BlockKind, text: str, *, level: int = 0, page: int | None = None) -> None:
        if kind in ("code", "table"):
            text = _multiline(text)
        elif kind == "heading":
            text = _inline(text)
        else:
            # Line breaks the source meant (a <br>, a hard break, lines of a text file) are kept.
            text = "\n".join(line for line in map(_inline, text.split("\n")) if line)
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
            cells = [_inline(cell) for cell in row]
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


# ------------------------------------------------------------------------------------------ text


_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f\ufeff\ufffe\uffff]")


def _inline(text: str) -> str:
    """Runs of whitespace (newlines included) become one space; control characters go."""
    return re.sub(r"\s+", " ", _CONTROLS.sub("", text)).strip()


def _multiline(text: str) -> str:
    """Keeps line structure (code, tables, soft-wrapped text) but trims each line and the ends."""
    lines = [
        line.rstrip()
        for line in _CONTROLS.sub("", text.replace("\r\n", "\n").replace("\r", "\n")).split("\n")
    ]
    return "\n".join(lines).strip("\n")


def _paragraphs(text: str) -> list[str]:
    """Splits plain text on blank lines (form feeds count as blank lines too)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    return [p for p in (_multiline(chunk).strip() for chunk in re.split(r"\n[ \t]*\n", text)) if p]


def _decode(data: bytes) -> str:
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
    guessed = _guess_encoding(data)
    if guessed is None:
        raise IngestError("The text encoding of this file could not be recognised.")
    return data.decode(guessed, errors="replace")


def _guess_encoding(data: bytes) -> str | None:
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


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _parse_txt(path: str, out: _Collector) -> str:
    for paragraph in _paragraphs(_decode(_read(path))):
        out.add("paragraph", paragraph)
    return ""


def _parse_csv(path: str, out: _Collector) -> str:
    text = _decode(_read(path))
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


# ------------------------------------------------------------------------------------------- PDF


def _parse_pdf(path: str, out: _Collector) -> str:
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    try:
        pdf = pdfium.PdfDocument(path)
    except pdfium.PdfiumError as error:
        code = getattr(error, "err_code", None)
        if code == pdfium_c.FPDF_ERR_PASSWORD:
            raise IngestError(
                "The PDF is password-protected; remove the password and upload it again."
            ) from None
        if code == pdfium_c.FPDF_ERR_SECURITY:
            raise IngestError(
                "The PDF is encrypted with an unsupported security scheme and cannot be read."
            ) from None
        reasons = {
            pdfium_c.FPDF_ERR_FORMAT: "its structure is invalid",
            pdfium_c.FPDF_ERR_FILE: "the file could not be read",
            pdfium_c.FPDF_ERR_PAGE: "its page tree is invalid",
        }
        reason = reasons.get(code, "PDFium could not open it") if isinstance(code, int) else str(error)
        raise IngestError(f"The PDF is damaged and cannot be read: {reason}.") from None
    try:
        pages = len(pdf)
        if pages == 0:
            raise IngestError("The PDF is damaged and cannot be read: it has no pages.")
        failed: list[int] = []
        for index in range(pages):
            number = index + 1
            try:
                page = pdf[index]
            except pdfium.PdfiumError:
                failed.append(number)
                continue
            try:
                textpage = page.get_textpage()
                try:
                    text = textpage.get_text_range()
                finally:
                    textpage.close()
            except pdfium.PdfiumError:
                failed.append(number)
                continue
            finally:
                page.close()
            for paragraph in _paragraphs(text):
                out.add("paragraph", paragraph, page=number)
        if len(failed) == pages:
            raise IngestError("The PDF is damaged and cannot be read: none of its pages could be loaded.")
        if failed:
            out.warnings.append(f"{len(failed)} damaged page(s) skipped: {', '.join(map(str, failed[:20]))}.")
        return str(pdf.get_metadata_value("Title") or "")
    finally:
        pdf.close()


# ----------------------------------------------------------------------------------------- OOXML


# Every XML encoding a parser would accept: a UTF-16 DTD must not slip past a UTF-8 search.
_DTD_MARKERS = tuple(
    marker.encode(encoding)
    for marker in ("<!DOCTYPE", "<!ENTITY")
    for encoding in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
)
_IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".jpe",
    ".gif",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".emf",
    ".wmf",
)
_pillow_lock = threading.Lock()


def check_ooxml_package(path: str, fmt: str) -> None:
    """Rejects zip bombs, DTDs and giant images in a docx/xlsx before any parser library opens it.

    Only zip metadata and streamed, size-capped reads are used here, so a hostile file costs at most
    MAX_OOXML_UNPACKED bytes of decompression and a few MiB of memory.
    """
    label = _OOXML_LABEL[fmt]
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as error:
        raise IngestError(
            f"The {label} is damaged and cannot be read: it is not a valid ZIP package ({error})."
        ) from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_OOXML_ENTRIES:
            raise IngestError(
                f"The {label} contains {len(infos):,} parts; the limit is {MAX_OOXML_ENTRIES:,} "
                "(possible zip bomb)."
            )
        total = sum(info.file_size for info in infos)
        if total > MAX_OOXML_UNPACKED:
            raise IngestError(
                f"The {label} would unpack to {total / MIB:,.0f} MiB; the limit is "
                f"{MAX_OOXML_UNPACKED // MIB} MiB (possible zip bomb)."
            )
        for info in infos:
            if info.file_size > RATIO_CHECK_MIN_SIZE and info.file_size > MAX_OOXML_RATIO * max(
                info.compress_size, 1
            ):
                ratio = info.file_size / max(info.compress_size, 1)
                raise IngestError(
                    f"The {label} part {info.filename} is compressed {ratio:,.0f}:1; the limit is "
                    f"{MAX_OOXML_RATIO}:1 (possible zip bomb)."
                )
        names = {info.filename for info in infos}
        _check_main_part(fmt, names)
        content_types = _content_types(archive, label) if "[Content_Types].xml" in names else ({}, {})
        for info in infos:
            if info.is_dir():
                continue
            content_type = _content_type_of(info.filename, content_types)
            try:
                if content_type.startswith("image/") or info.filename.lower().endswith(_IMAGE_EXTENSIONS):
                    _check_image(archive, info, label)
                else:
                    _check_no_dtd(archive, info, label, xml_typed="xml" in content_type)
            except (
                zipfile.BadZipFile,
                RuntimeError,
                NotImplementedError,
                EOFError,
                OSError,
                ValueError,
            ) as error:
                # Bad CRC (a header lying about the size), encrypted entries, exotic compression.
                raise IngestError(
                    f"The {label} is damaged and cannot be read: {info.filename}: {error}."
                ) from None


def _check_main_part(fmt: str, names: set[str]) -> None:
    # By folder, not by exact part name: the main part is found through _rels/.rels and a few producers
    # name it differently (word/document2.xml).
    other = "xlsx" if fmt == "docx" else "docx"
    if any(name.startswith(_OOXML_FOLDER[fmt]) for name in names):
        return
    if any(name.startswith(_OOXML_FOLDER[other]) for name in names):
        raise IngestError(
            f"The file is named .{fmt} but its content is {FORMAT_LABELS[other]}, not {FORMAT_LABELS[fmt]}."
        )
    raise IngestError(f"The file is named .{fmt} but its content is a ZIP archive, not {FORMAT_LABELS[fmt]}.")


def _read_capped(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> Iterator[bytes]:
    """Streams a part in 1 MiB pieces, never more than `limit` bytes whatever its headers claim."""
    seen = 0
    with archive.open(info) as part:
        while seen < limit:
            piece = part.read(min(MIB, limit - seen))
            if not piece:
                return
            seen += len(piece)
            yield piece


def _content_types(archive: zipfile.ZipFile, label: str) -> tuple[dict[str, str], dict[str, str]]:
    """(extension → type, part name → type) from [Content_Types].xml, parsed with defusedxml."""
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring

    info = archive.getinfo("[Content_Types].xml")
    _check_no_dtd(archive, info, label, xml_typed=True)
    data = b"".join(_read_capped(archive, info, 4 * MIB))
    try:
        root = fromstring(data)
    except (DefusedXmlException, SyntaxError, ValueError) as error:
        raise IngestError(
            f"The {label} is damaged and cannot be read: [Content_Types].xml: {error}."
        ) from None
    defaults: dict[str, str] = {}
    overrides: dict[str, str] = {}
    for element in root:
        tag = element.tag.rpartition("}")[2]
        if tag == "Default":
            defaults[element.get("Extension", "").lower()] = element.get("ContentType", "").lower()
        elif tag == "Override":
            overrides[element.get("PartName", "").lstrip("/").lower()] = element.get(
                "ContentType", ""
            ).lower()
    return defaults, overrides


def _content_type_of(name: str, content_types: tuple[dict[str, str], dict[str, str]]) -> str:
    defaults, overrides = content_types
    if name.lower() in overrides:
        return overrides[name.lower()]
    return defaults.get(name.rpartition(".")[2].lower(), "")


def _check_no_dtd(archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str, *, xml_typed: bool) -> None:
    """OOXML never uses DTDs, so any <!DOCTYPE or <!ENTITY in an XML part is an entity-expansion/XXE attempt.

    Parts that are neither declared nor named as XML are scanned only if they start like XML: binary
    parts (embedded OLE objects, fonts) may contain those bytes by chance and are never parsed as XML.
    """
    looks_xml = xml_typed or info.filename.lower().endswith((".xml", ".rels", ".vml"))
    overlap = max(len(marker) for marker in _DTD_MARKERS) - 1
    tail = b""
    for index, piece in enumerate(_read_capped(archive, info, MAX_OOXML_UNPACKED)):
        if index == 0 and not looks_xml:
            start = piece[:64].lstrip(b"\xef\xbb\xbf\xff\xfe\x00 \t\r\n")
            if not start.startswith(b"<"):
                return
        window = tail + piece
        if any(marker in window for marker in _DTD_MARKERS):
            raise IngestError(
                f"The {label} was rejected: {info.filename} declares a DTD or XML entities, which Office "
                "files never contain (possible billion-laughs or XXE attack)."
            )
        tail = window[-overlap:]


@contextmanager
def _pillow_without_bomb_check() -> Iterator[None]:
    """Pillow refuses to even open images above its own pixel limit; we want the size to report it."""
    from PIL import Image

    with _pillow_lock:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _check_image(archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with archive.open(info) as part, _pillow_without_bomb_check(), Image.open(part) as image:
            # Image.open only reads the header; the pixels are never decoded here.
            width, height = image.size
    except (UnidentifiedImageError, SyntaxError, TypeError, ValueError, OSError, EOFError, IndexError):
        return  # not a raster format Pillow knows (SVG, EMF variants); no parser of ours decodes it either
    if width * height > MAX_IMAGE_PIXELS:
        raise IngestError(
            f"The {label} was rejected: embedded image {info.filename} is {width}×{height} pixels; "
            f"the limit is {MAX_IMAGE_PIXELS // 1_000_000} megapixels."
        )


def _out_of_memory(error: BaseException) -> bool:
    """Whether a library error is really a failed allocation under the sandbox's memory limit.

    libxml2 (under lxml, python-docx, openpyxl) reports one as a parse error "unknown error" whose log
    entry says ERR_NO_MEMORY; the sandbox must see it as memory, not as a damaged file.
    """
    log = getattr(error, "error_log", None) or []
    if any(getattr(entry, "type_name", "") == "ERR_NO_MEMORY" for entry in log):
        return True
    return "memory" in str(error).lower()


def _library_error(label: str, error: Exception) -> Exception:
    if _out_of_memory(error):
        return MemoryError(str(error))
    message = str(error).strip() or type(error).__name__
    return IngestError(f"The {label} is damaged and cannot be read: {message}.")


# ------------------------------------------------------------------------------------------ DOCX


_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_HEADING_STYLE = re.compile(r"heading\s*([1-9])", re.IGNORECASE)
_CODE_STYLES = frozenset({"html preformatted", "code", "source code", "macro text", "plain text"})


def _parse_docx(path: str, out: _Collector) -> str:
    check_ooxml_package(path, "docx")
    import docx

    try:
        document = docx.Document(path)
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - python-docx raises anything from KeyError to XMLSyntaxError
        raise _library_error("Word document", error) from None
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
        raise _library_error("Word document", error) from None
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


# ------------------------------------------------------------------------------------------ XLSX


def _parse_xlsx(path: str, out: _Collector) -> str:
    check_ooxml_package(path, "xlsx")
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - openpyxl raises anything from KeyError to ParseError
        raise _library_error("Excel workbook", error) from None
    try:
        title = (workbook.properties.title or "").strip()
        for index, sheet in enumerate(workbook.worksheets, start=1):
            # A sheet's declared dimension can claim A1:XFD1048576; count only the cells really there.
            reset = getattr(sheet, "reset_dimensions", None)
            if reset is not None:
                reset()
            rows = ([_cell_text(value) for value in row] for row in sheet.iter_rows(values_only=True))
            first = next((row for row in rows if any(row)), None)
            if first is None:
                continue  # an empty sheet says nothing
            out.add("heading", sheet.title, level=1, page=index)
            out.add_table(_chain_one(first, rows), page=index)
        return title
    except (IngestError, MemoryError):
        raise
    except Exception as error:  # noqa: BLE001 - a sheet that fails to stream means a damaged workbook
        raise _library_error("Excel workbook", error) from None
    finally:
        workbook.close()


def _chain_one(first: list[str], rest: Iterator[list[str]]) -> Iterator[list[str]]:
    yield first
    yield from rest


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat(sep=" ")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return str(value)


# ------------------------------------------------------------------------------------------ HTML


_LINE_BREAK = "\u2028"
_HTML_DROP = ("script", "style", "nav", "noscript", "template", "svg", "head", "iframe", "object")
_HTML_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_HTML_INLINE = frozenset(
    ("a", "abbr", "b", "bdi", "bdo", "big", "br", "cite", "code", "data", "del", "dfn", "em", "font", "i")
    + ("img", "input", "ins", "kbd", "label", "mark", "q", "rp", "rt", "ruby", "s", "samp", "small", "span")
    + ("strike", "strong", "sub", "sup", "time", "tt", "u", "var", "wbr")
)


def _parse_html(path: str, out: _Collector) -> str:
    import lxml.etree
    import lxml.html

    data = _read(path)
    parser = lxml.html.HTMLParser(
        encoding=_html_encoding(data), remove_comments=True, remove_pis=True, no_network=True
    )
    try:
        root = lxml.html.document_fromstring(data, parser=parser)
    except lxml.etree.ParserError:
        return ""  # "Document is empty": whitespace or comments only, reported as no text
    except (lxml.etree.LxmlError, ValueError) as error:
        if _out_of_memory(error):
            raise MemoryError(str(error)) from None
        raise IngestError(f"The HTML page could not be parsed: {error}.") from None
    title_element = root.find(".//title")
    title = title_element.text_content() if title_element is not None else ""
    for element in root.xpath("|".join(f"//{tag}" for tag in _HTML_DROP)):
        element.drop_tree()
    for br in root.iter("br"):
        # Marks the break so text_content() keeps it: a paragraph keeps it as a line break, a heading or a
        # table cell folds it into a space (\u2028 is whitespace to `_inline`).
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
    return _guess_encoding(data) or "cp1252"


class _HtmlWalker:
    """Emits blocks in document order; loose inline text between blocks becomes a paragraph."""

    def __init__(self, out: _Collector) -> None:
        self.out = out
        self.buffer: list[str] = []

    def flush(self, kind: BlockKind) -> None:
        text = "\n".join(_inline(line) for line in "".join(self.buffer).split(_LINE_BREAK))
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


# -------------------------------------------------------------------------------------- Markdown


_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)


def _parse_markdown(path: str, out: _Collector) -> str:
    from markdown_it import MarkdownIt

    text = _decode(_read(path)).replace("\r\n", "\n")
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
            heading = _md_inline(tokens[index + 1])
            if level == 1 and not title:
                title = heading
            out.add("heading", heading, level=level)
            index += 2
        elif token.type == "paragraph_open":
            out.add("list" if list_depth else "paragraph", _md_inline(tokens[index + 1]))
            index += 2
        elif token.type in ("fence", "code_block"):
            out.add("code", token.content)
        elif token.type == "html_block":
            out.add("paragraph", _html_fragment_text(token.content))
        elif token.type == "table_open":
            rows: list[list[str]] = []
            while index < len(tokens) and tokens[index].type != "table_close":
                current = tokens[index]
                if current.type == "tr_open":
                    rows.append([])
                elif current.type == "inline" and rows:
                    rows[-1].append(_md_inline(current))
                index += 1
            out.add_table(rows)
        index += 1
    return title


def _md_inline(token: Token) -> str:
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


def _html_fragment_text(fragment: str) -> str:
    import lxml.etree
    import lxml.html

    try:
        element = lxml.html.fragment_fromstring(fragment, create_parent="div")
    except (lxml.etree.ParserError, ValueError):
        return ""
    for dropped in element.xpath("|".join(f".//{tag}" for tag in _HTML_DROP)):
        dropped.drop_tree()
    return str(element.text_content())
