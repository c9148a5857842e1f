"""The OOXML (docx/xlsx) package guard: zip bombs, DTDs and giant images are refused before parsing.

Only zip metadata and streamed, size-capped reads are used, so python-docx and openpyxl never see
a package that fails these checks.
"""

from __future__ import annotations

import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager

from knowledge.ingest.formats import FORMAT_LABELS
from knowledge.ingest.types import IngestError

MIB = 1024 * 1024

# OOXML zip limits. Real documents are far below them; a zip bomb is far above.
MAX_OOXML_UNPACKED = 256 * MIB
MAX_OOXML_RATIO = 200
RATIO_CHECK_MIN_SIZE = 1 * MIB  # tiny parts (XML boilerplate) legitimately compress very well
MAX_OOXML_ENTRIES = 10_000
MAX_IMAGE_PIXELS = 64_000_000

_OOXML_LABEL = {"docx": "Word document", "xlsx": "Excel workbook"}
_OOXML_FOLDER = {"docx": "word/", "xlsx": "xl/"}

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
