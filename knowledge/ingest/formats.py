"""Which files we accept, and whether an upload's bytes are what its name says.

Pure functions over a name and the first bytes of a file: no Django, no parser libraries, so the web
request can reject a bad upload before anything is stored or queued.
"""

from __future__ import annotations

import re
import struct
import unicodedata

from knowledge.ingest.types import IngestError

# How many leading bytes callers should pass to `detect_format`. OOXML is told apart (docx vs xlsx) by the
# part names in the zip's local headers, which sit near the start; 64 KiB covers them in practice.
HEAD_BYTES = 64 * 1024

FORMATS: dict[str, str] = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".html": "html",
    ".htm": "html",
    ".md": "md",
    ".markdown": "md",
    ".txt": "txt",
    ".csv": "csv",
    ".xlsx": "xlsx",
}

FORMAT_LABELS: dict[str, str] = {
    "pdf": "a PDF",
    "docx": "a Word document (.docx)",
    "html": "an HTML page",
    "md": "a Markdown file",
    "txt": "a text file",
    "csv": "a CSV file",
    "xlsx": "an Excel workbook (.xlsx)",
}
SUPPORTED_SUMMARY = "PDF, Word (.docx), Excel (.xlsx), HTML, Markdown, plain text and CSV"

# Old binary Office formats are the most common near-miss, so they get a specific hint.
LEGACY_HINTS: dict[str, str] = {
    ".doc": "Legacy Word files (.doc) are not supported; save the file as .docx and upload it again.",
    ".xls": "Legacy Excel files (.xls) are not supported; save the file as .xlsx and upload it again.",
    ".ppt": "PowerPoint files are not supported.",
    ".pptx": "PowerPoint files are not supported.",
}

# (magic, offset, description) for content we can name when it turns up under the wrong extension.
_MAGIC: list[tuple[bytes, int, str]] = [
    (b"\x89PNG\r\n\x1a\n", 0, "a PNG image"),
    (b"\xff\xd8\xff", 0, "a JPEG image"),
    (b"GIF87a", 0, "a GIF image"),
    (b"GIF89a", 0, "a GIF image"),
    (b"II*\x00", 0, "a TIFF image"),
    (b"MM\x00*", 0, "a TIFF image"),
    (b"BM", 0, "a BMP image"),
    (b"WEBP", 8, "a WebP image"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", 0, "a legacy or password-protected Office file"),
    (b"\x1f\x8b", 0, "a gzip archive"),
    (b"Rar!\x1a\x07", 0, "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", 0, "a 7-Zip archive"),
    (b"\x7fELF", 0, "a Linux executable"),
    (b"MZ", 0, "a Windows executable"),
    (b"ftyp", 4, "a video or audio file"),
    (b"ID3", 0, "an MP3 file"),
    (b"OggS", 0, "an Ogg media file"),
    (b"fLaC", 0, "a FLAC audio file"),
]

_ZIP_LOCAL = b"PK\x03\x04"
_ZIP_CENTRAL = b"PK\x01\x02"
_ZIP_END = b"PK\x05\x06"

# Bidirectional overrides can make "invoice_gpj.exe" display as "invoice_exe.jpg"; they are never needed
# in a file name we only display, so they go along with the C0/C1 controls.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
MAX_NAME_LENGTH = 255


def extension_of(filename: str) -> str:
    """The lower-cased extension of the last path component, with its dot ("" when there is none)."""
    base = re.split(r"[\\/]", filename)[-1]
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem.strip("."):
        return ""  # ".bashrc" and "..." have no extension
    return "." + ext.lower().strip()


def detect_format(filename: str, head: bytes) -> str:
    """The format of an upload named `filename` whose content starts with `head`.

    Pass at least `HEAD_BYTES` bytes (or the whole file when it is smaller). Raises IngestError with a
    message for the person who uploaded the file when the type is unsupported or the bytes disagree
    with the extension.
    """
    ext = extension_of(filename)
    if ext not in FORMATS:
        if ext in LEGACY_HINTS:
            raise IngestError(LEGACY_HINTS[ext])
        if not ext:
            raise IngestError(
                f"The file has no extension, so its type is unknown. Supported: {SUPPORTED_SUMMARY}."
            )
        raise IngestError(f"Files of type {ext} are not supported. Supported: {SUPPORTED_SUMMARY}.")
    fmt = FORMATS[ext]
    if not head:
        raise IngestError("The file is empty.")
    if fmt == "pdf":
        _check_pdf(ext, head)
    elif fmt in ("docx", "xlsx"):
        _check_ooxml(ext, fmt, head)
    else:
        _check_text(ext, fmt, head)
    return fmt


def _mismatch(ext: str, fmt: str, actual: str) -> IngestError:
    return IngestError(f"The file is named {ext} but its content is {actual}, not {FORMAT_LABELS[fmt]}.")


def _sniff(head: bytes) -> str | None:
    """A description of what `head` is, for the formats we can recognise by magic number."""
    for magic, offset, description in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            if magic == b"BM" and not _plausible_bmp(head):
                continue  # "BM" is also how plenty of text starts
            if magic == b"MZ" and len(head) < 64:
                continue
            if magic == b"WEBP" and head[:4] != b"RIFF":
                continue
            return description
    if head.startswith((_ZIP_LOCAL, _ZIP_END)):
        names = zip_names_in(head)
        if any(n.startswith("word/") for n in names):
            return "a Word document (.docx)"
        if any(n.startswith("xl/") for n in names):
            return "an Excel workbook (.xlsx)"
        if any(n.startswith("ppt/") for n in names):
            return "a PowerPoint presentation"
        return "a ZIP archive"
    if b"%PDF-" in head[:1024]:
        return "a PDF"
    return None


def _plausible_bmp(head: bytes) -> bool:
    if len(head) < 26:
        return False
    declared_size, _, header_size = struct.unpack_from("<I4sI", head, 2)
    return header_size in (12, 40, 52, 56, 64, 108, 124) and declared_size >= 26


def _check_pdf(ext: str, head: bytes) -> None:
    # The spec lets junk precede the header; readers look in the first 1024 bytes.
    if b"%PDF-" in head[:1024]:
        return
    actual = _sniff(head)
    if actual is None:
        raise IngestError(f"The file is named {ext} but is not a PDF (it has no %PDF header).")
    raise _mismatch(ext, "pdf", actual)


def _check_ooxml(ext: str, fmt: str, head: bytes) -> None:
    if not head.startswith((_ZIP_LOCAL, _ZIP_END)):
        actual = _sniff(head)
        if actual == "a legacy or password-protected Office file":
            raise IngestError(
                f"The file is named {ext} but is a legacy (.doc/.xls) or password-protected Office file. "
                f"Remove the password or save it as {ext} and upload it again."
            )
        if actual is None:
            raise IngestError(
                f"The file is named {ext} but is not {FORMAT_LABELS[fmt]} (it is not a ZIP package)."
            )
        raise _mismatch(ext, fmt, actual)
    names = zip_names_in(head)
    has_word = any(n.startswith("word/") for n in names)
    has_xl = any(n.startswith("xl/") for n in names)
    wanted, other = (has_word, has_xl) if fmt == "docx" else (has_xl, has_word)
    if wanted:
        return
    if other or any(n.startswith("ppt/") for n in names):
        raise _mismatch(ext, fmt, _sniff(head) or "a ZIP archive")
    if _ZIP_END in head:
        # We saw the whole central directory and no part of the expected kind: a plain zip.
        raise _mismatch(ext, fmt, "a ZIP archive")
    # The head ended before any telling part name; the loader checks the full part list later.


def zip_names_in(head: bytes) -> set[str]:
    """Member names readable from the local and central headers present in `head` (which may be cut)."""
    names: set[str] = set()
    for signature, length_at, name_at in ((_ZIP_LOCAL, 26, 30), (_ZIP_CENTRAL, 28, 46)):
        start = head.find(signature)
        while start != -1:
            if start + name_at <= len(head):
                (length,) = struct.unpack_from("<H", head, start + length_at)
                raw = head[start + name_at : start + name_at + length]
                if len(raw) == length:
                    try:
                        name = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        name = raw.decode("cp437")
                    if name.isprintable():
                        names.add(name)
            start = head.find(signature, start + 4)
    return names


def _check_text(ext: str, fmt: str, head: bytes) -> None:
    if head.startswith(b"%PDF-"):
        raise _mismatch(ext, fmt, "a PDF")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return  # UTF-16 with a BOM: NUL bytes are expected; the loader decodes it
    if b"\x00" not in head and _looks_like_text(head):
        return
    # Only content that is not text gets named by its magic number: plenty of text starts with "BM" or "MZ".
    actual = _sniff(head)
    if actual is not None:
        raise _mismatch(ext, fmt, actual)
    if b"\x00" in head:
        raise IngestError(f"The file is named {ext} but contains binary data (NUL bytes), not text.")
    raise IngestError(f"The file is named {ext} but its content is binary data, not text.")


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.reason == "unexpected end of data" and error.start >= len(head) - 3:
            text = head[: error.start].decode("utf-8")  # the head merely cut a character in two
        else:
            from charset_normalizer import from_bytes

            best = from_bytes(head).best()
            if best is None:
                return False
            text = str(best)
    controls = sum(1 for ch in text if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r\f\x1b")
    return controls <= max(1, len(text) // 100)


def safe_display_name(name: str) -> str:
    """An uploaded file name made safe to show: last path component only, no control characters.

    Raises IngestError when nothing usable is left (e.g. "../../").
    """
    cleaned = "".join(
        ch
        for ch in unicodedata.normalize("NFC", name)
        if unicodedata.category(ch) != "Cc" and ch not in _BIDI_CONTROLS
    )
    # Both separators: a name from a Windows browser may carry "C:\\Users\\..." in front.
    cleaned = re.split(r"[\\/]", cleaned)[-1]
    cleaned = re.sub(r"\s+", " ", cleaned).strip()
    if not cleaned.strip("."):
        raise IngestError("The file name is empty once directory parts and control characters are removed.")
    if len(cleaned) > MAX_NAME_LENGTH:
        ext = extension_of(cleaned)
        keep = ext if len(ext) <= 16 else ""
        cleaned = cleaned[: MAX_NAME_LENGTH - len(keep)].rstrip() + keep
    return cleaned
