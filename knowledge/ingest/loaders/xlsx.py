"""Excel workbooks: each non-empty sheet as a heading and a table of its cell values."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from knowledge.ingest.loaders.common import BlockCollector, library_error
from knowledge.ingest.loaders.ooxml import check_ooxml_package
from knowledge.ingest.types import IngestError


def parse_xlsx(path: str, out: BlockCollector) -> str:
    check_ooxml_package(path, "xlsx")
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - openpyxl raises anything from KeyError to ParseError
        raise library_error("Excel workbook", error) from None
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
        raise library_error("Excel workbook", error) from None
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
