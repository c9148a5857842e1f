"""Parsing uploads into blocks, and refusing hostile or broken ones with a reason a person can act on.

No database: these run under pytest-django without the `db` fixture, and the parser half has no Django.
Hostile inputs go through `parse_in_child` as well as `parse_file`, to show the calling process survives.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from knowledge.ingest import sandbox
from knowledge.ingest.formats import HEAD_BYTES, detect_format, safe_display_name
from knowledge.ingest.loaders import NO_TEXT, common, parse_file
from knowledge.ingest.sandbox import IMPORT_ROOT, parse_in_child
from knowledge.ingest.types import Block, IngestError, ParsedDocument
from knowledge.tests import samples

SUPPORTED = "PDF, Word (.docx), Excel (.xlsx), HTML, Markdown, plain text and CSV"
FRENCH = (
    "Les employés reçoivent leur salaire à la fin du mois. Les congés payés sont de vingt-cinq jours par "
    "année. Où trouver le règlement intérieur ? Il est affiché près de la cafétéria.\n"
)


def head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(HEAD_BYTES)


def rejects(path: Path, fmt: str, reason: str) -> None:
    """Both in-process and in the sandbox child, parsing fails with exactly `reason`."""
    with pytest.raises(IngestError) as in_process:
        parse_file(str(path), fmt)
    assert str(in_process.value) == reason
    with pytest.raises(IngestError) as in_child:
        parse_in_child(str(path), fmt)
    assert str(in_child.value) == reason


def kinds(document: ParsedDocument) -> list[tuple[str, str, int, int | None]]:
    return [(b.kind, b.text, b.level, b.page) for b in document.blocks]


# ------------------------------------------------------------------------------------ hostile PDF


def test_it_rejects_a_corrupt_pdf(tmp_path: Path) -> None:
    path = samples.write_corrupt_pdf(tmp_path)
    assert detect_format(path.name, head(path)) == "pdf"  # the header is fine; the body is not
    rejects(path, "pdf", "The PDF is damaged and cannot be read: its structure is invalid.")


def test_it_rejects_a_pdf_with_a_circular_xref_and_page_tree(tmp_path: Path) -> None:
    rejects(
        samples.write_circular_pdf(tmp_path),
        "pdf",
        "The PDF is damaged and cannot be read: none of its pages could be loaded.",
    )


def test_it_rejects_a_password_protected_pdf(tmp_path: Path) -> None:
    rejects(
        samples.write_encrypted_pdf(tmp_path),
        "pdf",
        "The PDF is password-protected; remove the password and upload it again.",
    )


def test_it_rejects_a_pdf_without_text(tmp_path: Path) -> None:
    rejects(samples.write_scanned_pdf(tmp_path), "pdf", NO_TEXT)
    assert (
        NO_TEXT == "No text could be extracted from this file (is it a scan? image OCR is not supported yet)."
    )


# ---------------------------------------------------------------------------------- hostile OOXML


def test_it_rejects_a_zip_bomb_docx_before_decompressing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = samples.write_zip_bomb_docx(tmp_path)
    assert path.stat().st_size < 5 * samples.MIB  # 300 MiB of zeros, a few hundred KB on disk
    reason = "The Word document would unpack to 301 MiB; the limit is 256 MiB (possible zip bomb)."
    rejects(path, "docx", reason)

    # The verdict comes from the zip's directory alone: no part may even be opened for reading.
    def no_reading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a part was decompressed before the zip-bomb check")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_reading)
    with pytest.raises(IngestError, match="possible zip bomb"):
        parse_file(str(path), "docx")


def test_it_rejects_a_zip_bomb_xlsx_by_its_compression_ratio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = samples.write_zip_bomb_xlsx(tmp_path)  # 64 MiB: under the total limit, but ~1000:1
    ratio = "is compressed 1,029:1; the limit is 200:1 (possible zip bomb)."
    reason = f"The Excel workbook part xl/padding.bin {ratio}"
    rejects(path, "xlsx", reason)

    def no_reading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a part was decompressed before the zip-bomb check")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_reading)
    with pytest.raises(IngestError, match="possible zip bomb"):
        parse_file(str(path), "xlsx")


def test_it_rejects_an_ooxml_package_with_too_many_parts(tmp_path: Path) -> None:
    rejects(
        samples.write_many_entries_docx(tmp_path),
        "docx",
        "The Word document contains 10,018 parts; the limit is 10,000 (possible zip bomb).",
    )


def test_it_rejects_billion_laughs_in_a_docx(tmp_path: Path) -> None:
    rejects(
        samples.write_billion_laughs_docx(tmp_path),
        "docx",
        "The Word document was rejected: word/document.xml declares a DTD or XML entities, which Office "
        "files never contain (possible billion-laughs or XXE attack).",
    )


def test_it_rejects_an_external_entity_in_an_xlsx(tmp_path: Path) -> None:
    rejects(
        samples.write_xxe_xlsx(tmp_path),
        "xlsx",
        "The Excel workbook was rejected: xl/workbook.xml declares a DTD or XML entities, which Office "
        "files never contain (possible billion-laughs or XXE attack).",
    )


def test_it_rejects_a_giant_embedded_image_from_its_header(tmp_path: Path) -> None:
    path = samples.write_huge_image_docx(tmp_path)
    rejects(
        path,
        "docx",
        "The Word document was rejected: embedded image word/media/image1.png is 50000×50000 pixels; "
        "the limit is 64 megapixels.",
    )
    # The same document with a normal picture is fine: the check is about size, not about images.
    fine = samples.write_huge_image_docx(tmp_path, "small-image.docx", side=800)
    assert parse_file(str(fine), "docx").blocks[0].text == "A picture follows."


def test_it_rejects_an_xlsx_passed_off_as_a_docx_even_past_the_sniffer(tmp_path: Path) -> None:
    path = samples.write_xlsx(tmp_path, "budget.docx")
    rejects(
        path,
        "docx",
        "The file is named .docx but its content is an Excel workbook (.xlsx), not a Word document (.docx).",
    )


# ---------------------------------------------------------------------------------------- sniffing


def test_it_rejects_bytes_that_do_not_match_the_extension(tmp_path: Path) -> None:
    png = samples.write_png_named_pdf(tmp_path)
    pdf = samples.write_pdf(tmp_path, ["Hello"], "letter.docx")
    xlsx = samples.write_xlsx(tmp_path, "budget.docx")
    docx = samples.write_docx(tmp_path, "report.xlsx")
    archive = tmp_path / "photos.docx"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("holiday/readme.txt", "not an office file")
    not_word, not_excel = "not a Word document (.docx)", "not an Excel workbook (.xlsx)"
    cases = {
        png: "The file is named .pdf but its content is a PNG image, not a PDF.",
        pdf: "The file is named .docx but its content is a PDF, not a Word document (.docx).",
        xlsx: f"The file is named .docx but its content is an Excel workbook (.xlsx), {not_word}.",
        docx: f"The file is named .xlsx but its content is a Word document (.docx), {not_excel}.",
        archive: "The file is named .docx but its content is a ZIP archive, not a Word document (.docx).",
    }
    for path, reason in cases.items():
        with pytest.raises(IngestError) as error:
            detect_format(path.name, head(path))
        assert str(error.value) == reason
    # And the parser, should it be handed the file anyway, does not trust the name either.
    rejects(png, "pdf", "The PDF is damaged and cannot be read: its structure is invalid.")
    rejects(archive, "docx", cases[archive])
    rejects(docx, "xlsx", cases[docx])


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        (
            "notes.txt",
            b"hello\x00world\x00" * 10,
            "The file is named .txt but contains binary data (NUL bytes), not text.",
        ),
        (
            "data.csv",
            bytes(range(1, 32)) * 20,
            "The file is named .csv but its content is binary data, not text.",
        ),
        (
            "page.html",
            b"\xff\xd8\xff\xe0" + bytes(200),
            "The file is named .html but its content is a JPEG image, not an HTML page.",
        ),
        (
            "readme.md",
            b"%PDF-1.7\n...",
            "The file is named .md but its content is a PDF, not a Markdown file.",
        ),
        (
            "old.docx",
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100),
            (
                "The file is named .docx but is a legacy (.doc/.xls) or password-protected Office file. "
                "Remove the password or save it as .docx and upload it again."
            ),
        ),
        (
            "tool.exe",
            b"MZ",
            f"Files of type .exe are not supported. Supported: {SUPPORTED}.",
        ),
        (
            "memo.doc",
            b"\xd0\xcf\x11\xe0",
            "Legacy Word files (.doc) are not supported; save the file as .docx and upload it again.",
        ),
        (
            "README",
            b"hello",
            f"The file has no extension, so its type is unknown. Supported: {SUPPORTED}.",
        ),
    ],
)
def test_it_rejects_unsupported_or_binary_content(name: str, content: bytes, reason: str) -> None:
    with pytest.raises(IngestError) as error:
        detect_format(name, content)
    assert str(error.value) == reason


def test_it_accepts_each_supported_format(tmp_path: Path) -> None:
    files = {
        samples.write_pdf(tmp_path, ["x"]): "pdf",
        samples.write_docx(tmp_path): "docx",
        samples.write_xlsx(tmp_path): "xlsx",
        samples.write_html(tmp_path): "html",
        samples.write_html(tmp_path, "page.HTM"): "html",
        samples.write_md(tmp_path): "md",
        samples.write_md(tmp_path, "notes.markdown"): "md",
        samples.write_txt(tmp_path): "txt",
        samples.write_txt(tmp_path, "latin.txt", FRENCH, "cp1252"): "txt",
        samples.write_txt(tmp_path, "wide.txt", "UTF-16 text with a BOM\n", "utf-16"): "txt",
        samples.write_csv(tmp_path): "csv",
        # Text that merely starts like a BMP or an executable is still text.
        samples.write_txt(tmp_path, "bmw.txt", "BMW and MZ are letters too.\n" * 10): "txt",
    }
    for path, fmt in files.items():
        assert detect_format(path.name, head(path)) == fmt, path.name


def test_it_rejects_an_empty_file(tmp_path: Path) -> None:
    path = samples.write_empty(tmp_path)
    with pytest.raises(IngestError) as error:
        detect_format(path.name, head(path))
    assert str(error.value) == "The file is empty."
    rejects(path, "txt", NO_TEXT)  # a whitespace-only or empty file that got past the sniffer
    rejects(
        samples.write_empty(tmp_path, "empty.docx"),
        "docx",
        "The Word document is damaged and cannot be read: "
        "it is not a valid ZIP package (File is not a zip file).",
    )


def test_it_strips_directory_parts_and_control_characters_from_display_names() -> None:
    assert safe_display_name(samples.TRAVERSAL_NAME) == "passwd.pdf"
    assert safe_display_name("C:\\Users\\erin\\Desktop\\Q3 report.docx") == "Q3 report.docx"
    assert safe_display_name("  minutes\r\n 2024.txt ") == "minutes 2024.txt"
    assert safe_display_name("invoice_\u202egpj.exe") == "invoice_gpj.exe"  # no right-to-left override
    assert safe_display_name("Prüfbericht.pdf") == "Prüfbericht.pdf"
    long = safe_display_name("a" * 400 + ".pdf")
    assert len(long) == 255 and long.endswith(".pdf")


@pytest.mark.parametrize(
    "name", [samples.ONLY_TRAVERSAL_NAME, "", "..", "/", "\x00\x01", "dir/ ", "..\\..\\"]
)
def test_it_rejects_a_name_with_nothing_left_after_cleaning(name: str) -> None:
    with pytest.raises(IngestError) as error:
        safe_display_name(name)
    assert (
        str(error.value) == "The file name is empty once directory parts and control characters are removed."
    )


# ----------------------------------------------------------------------------------------- sandbox


@pytest.fixture(scope="module")
def big_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # ~13 MB of short paragraphs: a valid page whose parsed tree needs a few hundred MiB and seconds of CPU.
    return samples.write_big_html(tmp_path_factory.mktemp("big"), paragraphs=400_000)


def test_it_stops_a_parse_that_needs_too_much_memory(big_html: Path) -> None:
    with pytest.raises(IngestError) as error:
        parse_in_child(str(big_html), "html", memory_mb=128)
    assert str(error.value) == "Parsing needed more than 128 MiB of memory and was stopped."


def test_it_stops_a_parse_that_uses_too_much_cpu(big_html: Path) -> None:
    with pytest.raises(IngestError) as error:
        parse_in_child(str(big_html), "html", cpu_s=1)
    assert (
        str(error.value)
        == "Parsing took longer than 1 s and was stopped (the file may be damaged or hostile)."
    )


def test_it_stops_a_parse_that_runs_past_the_wall_clock_timeout(big_html: Path) -> None:
    with pytest.raises(IngestError) as error:
        parse_in_child(str(big_html), "html", timeout_s=1)
    assert (
        str(error.value)
        == "Parsing took longer than 1 s and was stopped (the file may be damaged or hostile)."
    )


def test_it_reports_a_crashed_parser_with_the_last_line_of_its_stderr(tmp_path: Path) -> None:
    with pytest.raises(IngestError) as error:
        parse_in_child(str(tmp_path / "gone.txt"), "txt")
    assert str(error.value) == (
        "The parser crashed: FileNotFoundError: [Errno 2] No such file or directory: 'the file'"
    )


def test_it_names_the_signal_when_the_parser_dies_of_one() -> None:
    # A segfault in C code cannot be staged portably, so the wording is checked on the helper.
    assert sandbox._crash_line("UserWarning: unrelated\n", -signal.SIGSEGV) == "killed by SIGSEGV."
    assert sandbox._crash_line("", 3) == "exit status 3."


def test_it_bounds_what_it_keeps_of_a_noisy_child(monkeypatch: pytest.MonkeyPatch) -> None:
    # A child stuck in a loop that prints must not fill the worker's memory: stderr keeps its tail only,
    # and stdout beyond what any document could produce stops the child.
    noisy = "import sys\nfor i in range(2000):\n    sys.stderr.write(f'{i:0999d}\\n')\n"
    returncode, _, stderr = sandbox._run_bounded([sys.executable, "-c", noisy], {}, 30)
    assert returncode == 0
    assert len(stderr) == sandbox.MAX_STDERR_BYTES and stderr.endswith(b"1999\n")
    monkeypatch.setattr(sandbox, "MAX_STDOUT_BYTES", 10_000)
    chatty = "import sys\nwhile True:\n    sys.stdout.write('x' * 1000)\n"
    with pytest.raises(IngestError) as error:
        sandbox._run_bounded([sys.executable, "-c", chatty], {}, 30)
    assert str(error.value) == "The parser crashed: it produced more output than a document can."


def test_it_returns_the_same_document_from_the_child_as_in_process(tmp_path: Path) -> None:
    for path, fmt in [(samples.write_docx(tmp_path), "docx"), (samples.write_xlsx(tmp_path), "xlsx")]:
        assert parse_in_child(str(path), fmt) == parse_file(str(path), fmt)


def test_it_keeps_django_and_torch_out_of_the_parsing_child(tmp_path: Path) -> None:
    paths = [
        (samples.write_pdf(tmp_path, ["x"]), "pdf"),
        (samples.write_docx(tmp_path), "docx"),
        (samples.write_xlsx(tmp_path), "xlsx"),
        (samples.write_html(tmp_path), "html"),
        (samples.write_md(tmp_path), "md"),
        (samples.write_csv(tmp_path), "csv"),
    ]
    script = (
        "import sys\n"
        "import knowledge.ingest.sandbox\n"
        "from knowledge.ingest.loaders import parse_file\n"
        f"for path, fmt in {[(str(p), f) for p, f in paths]!r}:\n"
        "    parse_file(path, fmt)\n"
        "heavy = {'django', 'torch', 'transformers', 'celery'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=IMPORT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------- formats


def test_it_parses_a_pdf_into_paragraphs_with_page_numbers(tmp_path: Path) -> None:
    path = samples.write_pdf(tmp_path, ["Leave policy\nPaid leave is 25 days.", "Sick leave needs a note."])
    document = parse_in_child(str(path), "pdf")
    assert kinds(document) == [
        ("paragraph", "Leave policy\nPaid leave is 25 days.", 0, 1),
        ("paragraph", "Sick leave needs a note.", 0, 2),
    ]


def test_it_parses_a_docx_with_headings_lists_and_a_table_in_body_order(tmp_path: Path) -> None:
    document = parse_file(str(samples.write_docx(tmp_path)), "docx")
    assert document.title == "Employee Handbook"
    assert kinds(document) == [
        ("heading", "Benefits", 1, None),
        ("paragraph", "Everyone gets health insurance from day one.", 0, None),
        ("heading", "Parental leave", 2, None),
        ("paragraph", "Parents get sixteen weeks of paid leave.", 0, None),
        ("list", "Apply through the HR portal", 0, None),
        ("list", "Tell your manager", 0, None),
        ("table", "Country | Weeks\nFrance | 16\nJapan | 14", 0, None),
        ("paragraph", "Questions go to hr@example.com.", 0, None),
    ]


def test_it_parses_an_xlsx_into_a_heading_and_tables_per_sheet(tmp_path: Path) -> None:
    document = parse_file(str(samples.write_xlsx(tmp_path, rows=120)), "xlsx")
    assert document.title == "Office budget"
    headings = [(b.text, b.page) for b in document.blocks if b.kind == "heading"]
    assert headings == [("Offices", 1), ("Notes", 2)]  # the empty third sheet says nothing
    offices = [b for b in document.blocks if b.kind == "table" and b.page == 1]
    assert [len(b.text.splitlines()) for b in offices] == [50, 50, 23]  # 120 rows, the header in each block
    assert all(b.text.startswith("City | Headcount | Budget\n") for b in offices)
    assert offices[0].text.splitlines()[1:3] == ["City 1 | 10 | 1000.5", "City 2 | 11 | 2001"]
    assert document.blocks[-1] == Block("table", "Topic | Owner\nLeases | Facilities", page=2)


def test_it_parses_html_without_scripts_styles_or_navigation(tmp_path: Path) -> None:
    document = parse_file(str(samples.write_html(tmp_path)), "html")
    assert document.title == "Travel policy"
    assert kinds(document) == [
        ("heading", "Travel", 1, None),
        ("paragraph", "Book trains for trips under four hours.", 0, None),
        ("heading", "Expenses", 2, None),
        ("list", "Keep receipts", 0, None),
        ("list", "Submit within 30 days", 0, None),
        ("code", "claim --amount 12.50\nclaim --submit", 0, None),
        ("table", "Class | Allowed\nEconomy | Yes\nBusiness | Over 6 hours", 0, None),
        ("paragraph", "Loose text in a div.", 0, None),
    ]


def test_it_keeps_line_breaks_and_nested_list_items_in_html(tmp_path: Path) -> None:
    page = (
        "<html><body><p>Line one<br>Line two</p><h3>A<br>title</h3>"
        "<ul><li>Outer<ul><li>Inner</li></ul></li></ul>"
        "<table><tr><th>Only</th><th>Header</th></tr></table></body></html>"
    )
    document = parse_file(str(samples.write_html(tmp_path, content=page)), "html")
    assert document.title == ""
    assert kinds(document) == [
        ("paragraph", "Line one\nLine two", 0, None),
        ("heading", "A title", 3, None),
        ("list", "Outer", 0, None),
        ("list", "Inner", 0, None),
        ("table", "Only | Header", 0, None),
    ]
    for empty in ("", "  \n", "<!-- nothing -->", "<html><body><script>x()</script></body></html>"):
        rejects(samples.write_html(tmp_path, "empty.html", empty), "html", NO_TEXT)


def test_it_parses_markdown_headings_lists_code_and_tables(tmp_path: Path) -> None:
    document = parse_file(str(samples.write_md(tmp_path)), "md")
    assert document.title == "Onboarding guide"
    assert kinds(document) == [
        ("heading", "Onboarding guide", 1, None),
        ("paragraph", "Welcome to the team. Read this first.", 0, None),
        ("heading", "Accounts", 2, None),
        ("list", "Laptop from IT", 0, None),
        ("list", "Badge from reception", 0, None),
        ("code", "ssh-keygen -t ed25519", 0, None),
        ("table", "Tool | Owner\nSlack | IT\nJira | PMO", 0, None),
        ("heading", "Last step", 3, None),
        ("paragraph", "Say hello.", 0, None),
    ]


def test_it_takes_the_markdown_title_from_front_matter(tmp_path: Path) -> None:
    path = samples.write_md(
        tmp_path, content='---\ntitle: "Security FAQ"\ntags: [it]\n---\n\nUse a password manager.\n'
    )
    document = parse_file(str(path), "md")
    assert document.title == "Security FAQ"
    assert kinds(document) == [("paragraph", "Use a password manager.", 0, None)]


def test_it_parses_text_into_paragraphs_in_any_common_encoding(tmp_path: Path) -> None:
    document = parse_file(str(samples.write_txt(tmp_path)), "txt")
    assert document.title == ""
    assert [b.text for b in document.blocks] == [
        "Opening hours",
        "The office opens at 8:00.\nIt closes at 18:00.",
        "On Fridays we close at 16:00.",
    ]
    latin = samples.write_txt(tmp_path, "latin.txt", FRENCH, "cp1252")
    assert parse_file(str(latin), "txt").blocks[0].text == FRENCH.strip()
    czech = "Příliš žluťoučký kůň úpěl ďábelské ódy. Česká republika má krásné hory a řeky.\n"
    assert (
        parse_file(str(samples.write_txt(tmp_path, "cz.txt", czech, "cp1250")), "txt").blocks[0].text
        == czech.strip()
    )
    chinese = "员工手册：年假为十五天。病假需要医生证明。所有报销请在三十天内提交。\n"
    assert (
        parse_file(str(samples.write_txt(tmp_path, "zh.txt", chinese, "gbk")), "txt").blocks[0].text
        == chinese.strip()
    )
    wide = samples.write_txt(tmp_path, "wide.txt", "Grüße\n\naus Köln\n", "utf-16")
    assert [b.text for b in parse_file(str(wide), "txt").blocks] == ["Grüße", "aus Köln"]


def test_it_parses_csv_into_table_blocks_that_repeat_the_header(tmp_path: Path) -> None:
    document = parse_file(str(samples.write_csv(tmp_path, rows=120)), "csv")
    assert [b.kind for b in document.blocks] == ["table"] * 3
    assert [len(b.text.splitlines()) for b in document.blocks] == [50, 50, 23]
    assert all(b.text.startswith("id | name | team\n") for b in document.blocks)
    assert document.blocks[0].text.splitlines()[1] == "1 | Person 1 | Support"
    semicolons = tmp_path / "semi.csv"
    semicolons.write_text("Name;City\nAnna;Wien\n", encoding="utf-8")
    assert parse_file(str(semicolons), "csv").blocks == [Block("table", "Name | City\nAnna | Wien")]


def test_it_caps_the_total_text_a_document_may_yield(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "MAX_TEXT_CHARS", 50)
    with pytest.raises(IngestError) as error:
        parse_file(str(samples.write_txt(tmp_path)), "txt")
    assert (
        str(error.value)
        == "The document contains more than 50 characters of text; split it into smaller files."
    )
