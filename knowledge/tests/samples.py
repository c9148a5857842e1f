"""Test files for ingestion, good and hostile, written into a given directory.

Every generator returns the path of the file it wrote. They are meant to be fast and light on disk: the
zip bombs are written by streaming zeros through DEFLATE, so a 300 MiB part costs ~300 KB on disk.
"""

from __future__ import annotations

import csv
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

MIB = 1024 * 1024


# --------------------------------------------------------------------------------------------- PDF


def _pdf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _content_stream(text: str) -> bytes:
    # One text line per input line, 14 pt apart, so a multi-line page exercises paragraph splitting.
    ops = ["BT", "/F1 12 Tf", "72 720 Td", "14 TL"]
    for i, line in enumerate(text.split("\n")):
        ops.append(f"({_pdf_escape(line)}) Tj" if i == 0 else f"T* ({_pdf_escape(line)}) Tj")
    ops.append("ET")
    return "\n".join(ops).encode("latin-1")


def _assemble_pdf(objects: Sequence[bytes], *, root: int = 1, extra_trailer: str = "") -> bytes:
    """Objects numbered 1..n; writes a classic xref table with exact byte offsets."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref_at = len(out)
    out += f"xref\n0 {len(objects) + 1}\n".encode()
    out += b"0000000000 65535 f \n"
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    trailer = f"<< /Size {len(objects) + 1} /Root {root} 0 R {extra_trailer.format(xref=xref_at)}>>"
    out += f"trailer\n{trailer}\nstartxref\n{xref_at}\n%%EOF\n".encode()
    return bytes(out)


def _text_pdf_objects(pages: Sequence[str]) -> list[bytes]:
    # 1 catalog, 2 pages, 3 font, then a (page, content) pair per page.
    first_page = 4
    kids = " ".join(f"{first_page + 2 * i} 0 R" for i in range(len(pages)))
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for i, text in enumerate(pages):
        content_number = first_page + 2 * i + 1
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {content_number} 0 R >>".encode()
        )
        stream = _content_stream(text)
        objects.append(f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"\nendstream")
    return objects


def write_pdf(directory: Path, pages: Sequence[str], name: str = "sample.pdf") -> Path:
    """A valid text PDF, one page per string; newlines in a string become separate text lines."""
    path = directory / name
    path.write_bytes(_assemble_pdf(_text_pdf_objects(pages)))
    return path


def write_corrupt_pdf(directory: Path, name: str = "corrupt.pdf") -> Path:
    """A PDF header followed by garbage: no objects, no xref, no trailer."""
    path = directory / name
    path.write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + bytes(range(256)) * 8 + b"\n1 0 obj\n<< /Type /Cat")
    return path


def write_circular_pdf(directory: Path, name: str = "circular.pdf") -> Path:
    """The trailer's /Prev points at its own xref section and the page tree contains itself as a kid.

    The only /Page object is not reachable except through the looping /Pages node, so a reader that
    guards against the loop finds no usable pages and one that does not recurses forever.
    """
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>",
    ]
    path = directory / name
    path.write_bytes(_assemble_pdf(objects, extra_trailer="/Prev {xref} "))
    return path


def write_encrypted_pdf(directory: Path, name: str = "encrypted.pdf") -> Path:
    """A PDF whose trailer declares standard-handler encryption with a user password we don't know."""
    objects = _text_pdf_objects(["secret"])
    encrypt_number = len(objects) + 1
    # RC4 40-bit, revision 2; /O and /U are arbitrary so no password (including the empty one) matches.
    objects.append(
        b"<< /Filter /Standard /V 1 /R 2 /Length 40 /P -44 "
        b"/O <" + b"11" * 32 + b"> /U <" + b"22" * 32 + b"> >>"
    )
    path = directory / name
    path.write_bytes(
        _assemble_pdf(
            objects, extra_trailer=f"/Encrypt {encrypt_number} 0 R /ID [<{'ab' * 16}> <{'ab' * 16}>] "
        )
    )
    return path


def write_scanned_pdf(directory: Path, name: str = "scan.pdf") -> Path:
    """A valid PDF whose only page has no text (what a scan without OCR looks like to us)."""
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
    ]
    stream = b"0 0 0 rg 72 72 200 200 re f"
    objects.append(f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"\nendstream")
    path = directory / name
    path.write_bytes(_assemble_pdf(objects))
    return path


# -------------------------------------------------------------------------------------------- OOXML


def write_docx(directory: Path, name: str = "sample.docx") -> Path:
    """A Word document with a core title, headings, paragraphs, a list and a table between paragraphs."""
    import docx

    document = docx.Document()
    document.core_properties.title = "Employee Handbook"
    document.add_heading("Benefits", level=1)
    document.add_paragraph("Everyone gets health insurance from day one.")
    document.add_heading("Parental leave", level=2)
    document.add_paragraph("Parents get sixteen weeks of paid leave.")
    document.add_paragraph("Apply through the HR portal", style="List Bullet")
    document.add_paragraph("Tell your manager", style="List Number")
    table = document.add_table(rows=3, cols=2)
    for r, row in enumerate([("Country", "Weeks"), ("France", "16"), ("Japan", "14")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    document.add_paragraph("Questions go to hr@example.com.")
    path = directory / name
    document.save(str(path))
    return path


def write_xlsx(directory: Path, name: str = "sample.xlsx", *, rows: int = 3) -> Path:
    """A workbook with two sheets, a header row each; the first sheet gets `rows` data rows."""
    import openpyxl

    workbook = openpyxl.Workbook()
    workbook.properties.title = "Office budget"
    first = workbook.active
    assert first is not None
    first.title = "Offices"
    first.append(["City", "Headcount", "Budget"])
    for i in range(rows):
        first.append([f"City {i + 1}", 10 + i, 1000.5 * (i + 1)])
    second = workbook.create_sheet("Notes")
    second.append(["Topic", "Owner"])
    second.append(["Leases", "Facilities"])
    workbook.create_sheet("Empty")
    path = directory / name
    workbook.save(str(path))
    return path


def _rewrite_zip(source: Path, target: Path, replace: dict[str, bytes] | None = None) -> zipfile.ZipFile:
    """Copies `source` into a new zip at `target` (parts in `replace` swapped) and returns it open."""
    replace = replace or {}
    out = zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(source) as original:
        for info in original.infolist():
            out.writestr(info.filename, replace.get(info.filename, original.read(info.filename)))
    return out


def _add_zero_part(archive: zipfile.ZipFile, name: str, size: int) -> None:
    chunk = bytes(MIB)
    with archive.open(name, "w", force_zip64=True) as part:
        for _ in range(size // MIB):
            part.write(chunk)


def write_zip_bomb_docx(directory: Path, name: str = "bomb.docx", *, size: int = 300 * MIB) -> Path:
    """A valid docx plus one part of `size` zero bytes (more declared content than the total limit)."""
    valid = write_docx(directory, "bomb-base.docx")
    path = directory / name
    with _rewrite_zip(valid, path) as archive:
        _add_zero_part(archive, "word/padding.bin", size)
    valid.unlink()
    return path


def write_zip_bomb_xlsx(directory: Path, name: str = "bomb.xlsx", *, size: int = 64 * MIB) -> Path:
    """A valid xlsx plus one part of zeros: small enough for the total limit but ~1000:1 compressed."""
    valid = write_xlsx(directory, "bomb-base.xlsx")
    path = directory / name
    with _rewrite_zip(valid, path) as archive:
        _add_zero_part(archive, "xl/padding.bin", size)
    valid.unlink()
    return path


def write_many_entries_docx(directory: Path, name: str = "crowded.docx", *, entries: int = 10_001) -> Path:
    """A valid docx padded with thousands of empty parts."""
    valid = write_docx(directory, "crowded-base.docx")
    path = directory / name
    with _rewrite_zip(valid, path) as archive:
        for i in range(entries):
            archive.writestr(f"word/pad/{i}.txt", b"")
    valid.unlink()
    return path


BILLION_LAUGHS = b"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<!DOCTYPE lolz [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">
  <w:body><w:p><w:r><w:t>&lol9;</w:t></w:r></w:p></w:body>
</w:document>
"""


def write_billion_laughs_docx(directory: Path, name: str = "laughs.docx") -> Path:
    """A valid docx whose word/document.xml is replaced by the classic nested-entity expansion."""
    valid = write_docx(directory, "laughs-base.docx")
    path = directory / name
    with _rewrite_zip(valid, path, {"word/document.xml": BILLION_LAUGHS}):
        pass
    valid.unlink()
    return path


def write_xxe_xlsx(directory: Path, name: str = "xxe.xlsx") -> Path:
    """A valid xlsx whose shared workbook part declares an external entity pointing at /etc/passwd."""
    valid = write_xlsx(directory, "xxe-base.xlsx")
    with zipfile.ZipFile(valid) as original:
        workbook = original.read("xl/workbook.xml")
    declaration, _, rest = workbook.partition(b"?>")
    hostile = declaration + b'?>\n<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>' + rest
    path = directory / name
    with _rewrite_zip(valid, path, {"xl/workbook.xml": hostile}):
        pass
    valid.unlink()
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int) -> bytes:
    """A PNG with a real IHDR for width×height but a single tiny IDAT: only lazy header reads work."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00"))
        + _png_chunk(b"IEND", b"")
    )


def write_huge_image_docx(directory: Path, name: str = "huge-image.docx", *, side: int = 50_000) -> Path:
    """A docx that embeds a small real PNG, whose bytes are then swapped for a side×side PNG header."""
    import docx

    small = directory / "huge-image-small.png"
    small.write_bytes(_tiny_real_png())
    document = docx.Document()
    document.add_paragraph("A picture follows.")
    document.add_picture(str(small))
    base = directory / "huge-image-base.docx"
    document.save(str(base))
    small.unlink()
    with zipfile.ZipFile(base) as original:
        media = [n for n in original.namelist() if n.startswith("word/media/")]
    path = directory / name
    with _rewrite_zip(base, path, {media[0]: png_header(side, side)}):
        pass
    base.unlink()
    return path


def _tiny_real_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # one filter byte and one red RGB pixel
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


# -------------------------------------------------------------------------------------------- text


SAMPLE_HTML = """<!DOCTYPE html>
<html><head><title>Travel policy</title><style>p { color: red }</style>
<script>var secret = "do not index";</script></head>
<body>
<nav><a href="/">Home</a> <a href="/about">About</a></nav>
<h1>Travel</h1>
<p>Book trains for trips under <b>four hours</b>.</p>
<h2>Expenses</h2>
<ul><li>Keep receipts</li><li>Submit within 30 days</li></ul>
<pre>claim --amount 12.50
claim --submit</pre>
<table><tr><th>Class</th><th>Allowed</th></tr><tr><td>Economy</td><td>Yes</td></tr>
<tr><td>Business</td><td>Over 6 hours</td></tr></table>
<div>Loose text in a div.</div>
</body></html>
"""

SAMPLE_MD = """# Onboarding guide

Welcome to the **team**. Read this first.

## Accounts

- Laptop from IT
- Badge from reception

```bash
ssh-keygen -t ed25519
```

| Tool | Owner |
| ---- | ----- |
| Slack | IT |
| Jira | PMO |

### Last step

Say hello.
"""

SAMPLE_TXT = (
    "Opening hours\n\nThe office opens at 8:00.\nIt closes at 18:00.\n\n\nOn Fridays we close at 16:00.\n"
)


def write_html(directory: Path, name: str = "sample.html", content: str = SAMPLE_HTML) -> Path:
    path = directory / name
    path.write_text(content, encoding="utf-8")
    return path


def write_md(directory: Path, name: str = "sample.md", content: str = SAMPLE_MD) -> Path:
    path = directory / name
    path.write_text(content, encoding="utf-8")
    return path


def write_txt(
    directory: Path, name: str = "sample.txt", content: str = SAMPLE_TXT, encoding: str = "utf-8"
) -> Path:
    path = directory / name
    path.write_bytes(content.encode(encoding))
    return path


def write_csv(directory: Path, name: str = "sample.csv", *, rows: int = 120) -> Path:
    """A header row and `rows` data rows (enough for several table blocks)."""
    path = directory / name
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "name", "team"])
        for i in range(rows):
            writer.writerow([i + 1, f"Person {i + 1}", "Sales" if i % 2 else "Support"])
    return path


def write_big_html(directory: Path, name: str = "big.html", *, paragraphs: int = 400_000) -> Path:
    """A valid but large HTML page: many short paragraphs, cheap on disk, expensive as a parsed tree."""
    path = directory / name
    with path.open("w", encoding="utf-8") as handle:
        handle.write("<html><head><title>Big</title></head><body>\n")
        line = "<p>Row of text number {}</p>\n"
        for start in range(0, paragraphs, 10_000):
            handle.write("".join(line.format(i) for i in range(start, min(start + 10_000, paragraphs))))
        handle.write("</body></html>\n")
    return path


# ------------------------------------------------------------------------------------- bad inputs


def write_png_named_pdf(directory: Path, name: str = "photo.pdf") -> Path:
    """PNG bytes behind a .pdf extension."""
    path = directory / name
    path.write_bytes(_tiny_real_png())
    return path


def write_empty(directory: Path, name: str = "empty.txt") -> Path:
    path = directory / name
    path.write_bytes(b"")
    return path


TRAVERSAL_NAME = "../../etc/passwd\x00.pdf"
ONLY_TRAVERSAL_NAME = "../../"
