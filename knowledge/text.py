"""Text for PostgreSQL full-text search, English and Chinese alike.

PostgreSQL's parsers split on spaces, and Chinese has none, so Chinese runs are segmented with
jieba first and indexed with the `simple` configuration (no stemming, no stop words). The rest
of the text goes through `english` (stemming, stop words). A chunk's tsvector is the two joined.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
WORD = re.compile(r"\w+")

# Where a chunk's tsvector is computed: two parameters, the non-Chinese text and the segmented Chinese.
TSVECTOR_SQL = "to_tsvector('english', %s) || to_tsvector('simple', %s)"


@lru_cache(maxsize=1)
def _jieba() -> Any:
    import jieba

    # jieba logs its dictionary loading at INFO on every process start.
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def segment_cjk(text: str) -> list[str]:
    words: list[str] = []
    for run in CJK_RUN.findall(text):
        words += [w for w in _jieba().cut_for_search(run) if w.strip()]
    return words


def fts_parts(text: str) -> tuple[str, str]:
    """(non-Chinese text, segmented Chinese words) for TSVECTOR_SQL."""
    return CJK_RUN.sub(" ", text), " ".join(segment_cjk(text))


def tsquery_parts(query: str) -> tuple[str, str]:
    """OR-queries for `to_tsquery('english', ...)` and `to_tsquery('simple', ...)`.

    OR, not AND: a question's words are rarely all in the passage that answers it, and the
    ranking (ts_rank_cd) already prefers passages that match more of them. Only \\w tokens are
    kept, so no user text can inject tsquery syntax.
    """
    latin = [w for w in WORD.findall(CJK_RUN.sub(" ", query)) if not w.isdigit() or len(w) > 1]
    cjk = segment_cjk(query)
    return " | ".join(latin), " | ".join(cjk)
