"""PDF: each page's text through PDFium, split into paragraphs; damaged pages are skipped with a warning."""

from __future__ import annotations

from knowledge.ingest.loaders.common import BlockCollector, split_paragraphs
from knowledge.ingest.types import IngestError


def parse_pdf(path: str, out: BlockCollector) -> str:
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
            for paragraph in split_paragraphs(text):
                out.add("paragraph", paragraph, page=number)
        if len(failed) == pages:
            raise IngestError("The PDF is damaged and cannot be read: none of its pages could be loaded.")
        if failed:
            out.warnings.append(f"{len(failed)} damaged page(s) skipped: {', '.join(map(str, failed[:20]))}.")
        return str(pdf.get_metadata_value("Title") or "")
    finally:
        pdf.close()
