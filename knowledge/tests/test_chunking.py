"""The chunker, with the real MiniLM tokenizer (no Django, no database)."""

from __future__ import annotations

import random
from itertools import pairwise
from pathlib import Path

import pytest

from knowledge.ingest.chunking import TokenCounter, chunk_document, token_counter
from knowledge.ingest.types import Block, ChunkDraft, ParsedDocument

CHINESE = [
    "公司实行标准工时制度，员工每周工作五天，每天工作八小时。上班时间为上午九点至下午六点，中午十二点至一点为"
    "午休时间。因业务需要安排加班的，部门负责人应当提前一天在系统中提交加班申请，并说明加班的原因和预计时长。"
    "加班结束后，员工可以选择调休或者领取加班费，调休须在六个月内使用完毕。",
    "员工入职满一年后，可以享受带薪年假。工作满一年不满十年的，年假为五天；满十年不满二十年的，年假为十天；"
    "满二十年的，年假为十五天。年假原则上应当在当年休完，确因工作原因无法安排的，经部门负责人批准，可以顺延至"
    "次年第一季度。未休年假的，公司将按照国家规定支付相应的工资报酬。",
    "女员工生育享受一百五十八天产假，其中产前可以休假十五天。难产的，增加产假十五天；生育多胞胎的，每多生育"
    "一个婴儿，增加产假十五天。男员工在配偶生育期间享受十五天陪产假，陪产假应当在配偶生育后三十日内连续休完。"
    "产假和陪产假期间，工资照常发放，不影响年度绩效考核和晋升。",
    "员工因病需要休假的，应当提供二级以上医院出具的病假证明。病假在三天以内的，由部门负责人审批；超过三天的，"
    "还需报人力资源部备案。病假期间的工资按照员工本人基本工资的百分之八十发放，但不得低于当地最低工资标准的"
    "百分之八十。长期病假的安排，另行按照医疗期的相关规定执行。",
    "公司重视信息安全，所有员工都必须遵守信息安全管理制度。办公电脑应当设置开机密码，并在离开座位时锁定屏幕。"
    "禁止将公司的客户资料、源代码和财务数据复制到个人设备或者上传到未经批准的云存储服务。发现疑似钓鱼邮件或者"
    "安全漏洞的，应当立即向信息安全部门报告，不得自行处理。",
    "员工出差前，应当在差旅系统中提交出差申请，写明出差事由、目的地和行程安排。出差期间的交通费、住宿费按照"
    "公司差旅标准凭票报销，超出标准的部分由员工本人承担。出差结束后十五个工作日内，员工应当完成报销手续，逾期"
    "未报销的，财务部门有权不予受理。",
]

WORDS = [
    "employee", "manager", "leave", "policy", "request", "approval", "salary", "benefit", "office", "remote",
    "team", "project", "deadline", "holiday", "insurance", "pension", "training", "review", "contract",
    "security", "laptop", "password", "travel", "expense", "receipt",
]


def english_sentences(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [
        f"Rule {seed}.{i} says the " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16))) + "."
        for i in range(n)
    ]


def english_paragraph(seed: int, n: int = 8) -> str:
    return " ".join(english_sentences(seed, n))


def counter() -> TokenCounter:
    real = token_counter()
    assert real.exact, "the bundled MiniLM tokenizer.json should be found"
    return real


def assert_within_budget(chunks: list[ChunkDraft], max_tokens: int) -> None:
    for chunk in chunks:
        tokens = counter().count(chunk.embedding_text)
        assert tokens <= max_tokens, (tokens, chunk.embedding_text)
        assert chunk.token_count == tokens
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def hashes_by_heading(chunks: list[ChunkDraft]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for chunk in chunks:
        out.setdefault(chunk.heading, []).append(chunk.content_hash)
    return out


def test_it_returns_nothing_for_an_empty_document() -> None:
    assert chunk_document(ParsedDocument(blocks=[])) == []
    blank = [
        Block("heading", "  ", 1),
        Block("paragraph", " \n\t "),
        Block("table", "\n\n"),
        Block("code", ""),
    ]
    assert chunk_document(ParsedDocument(blocks=blank)) == []


def test_it_starts_a_chunk_at_every_heading_and_keeps_the_heading_path_out_of_the_text() -> None:
    doc = ParsedDocument(
        blocks=[
            Block("paragraph", "Read this first."),
            Block("heading", "Handbook", 1),
            Block("paragraph", "Welcome to the company."),
            Block("heading", "Benefits", 2),
            Block("paragraph", "We offer many benefits."),
            Block("heading", "Parental leave", 3),
            Block("paragraph", "Parents get sixteen weeks."),
            Block("heading", "Security", 2),
            Block("list", "Lock your screen.\nUse a password manager."),
            Block("heading", "Appendix", 1),
            Block("paragraph", "Forms are on the intranet."),
        ]
    )
    chunks = chunk_document(doc)
    assert [(c.heading, c.text) for c in chunks] == [
        ("", "Read this first."),
        ("Handbook", "Welcome to the company."),
        ("Handbook > Benefits", "We offer many benefits."),
        ("Handbook > Benefits > Parental leave", "Parents get sixteen weeks."),
        ("Handbook > Security", "Lock your screen.\nUse a password manager."),
        ("Appendix", "Forms are on the intranet."),
    ]
    assert chunks[3].embedding_text == "Handbook > Benefits > Parental leave\nParents get sixteen weeks."
    assert_within_budget(chunks, 256)


def test_it_packs_consecutive_blocks_of_a_section_and_takes_the_page_of_the_first() -> None:
    doc = ParsedDocument(
        blocks=[
            Block("heading", "Travel", 1, page=1),
            Block("paragraph", "Book trains early.", page=2),
            Block("paragraph", "Keep every receipt.", page=3),
            Block("list", "Tickets\nHotels", page=3),
            Block("list", "Meals", page=3),
        ]
    )
    [chunk] = chunk_document(doc)
    assert chunk.text == "Book trains early.\n\nKeep every receipt.\n\nTickets\nHotels\nMeals"
    assert chunk.page == 2


@pytest.mark.parametrize("max_tokens", [48, 100, 256])
def test_it_keeps_every_english_chunk_within_the_budget_of_the_real_tokenizer(max_tokens: int) -> None:
    blocks = [Block("heading", "Employee handbook", 1)]
    for section in range(4):
        blocks.append(Block("heading", f"Chapter {section} on policies and procedures", 2))
        blocks += [Block("paragraph", english_paragraph(section * 10 + p), page=section) for p in range(5)]
    chunks = chunk_document(ParsedDocument(blocks=blocks), max_tokens=max_tokens)
    assert len(chunks) > 4
    assert_within_budget(chunks, max_tokens)
    # Nothing is lost: every sentence is in some chunk, whole (they are all shorter than the budget).
    text = "\n".join(c.text for c in chunks)
    for block in blocks[1:]:
        if block.kind == "paragraph":
            for sentence in block.text.split(". "):
                assert sentence.rstrip(".") in text


@pytest.mark.parametrize("max_tokens", [64, 256])
def test_it_splits_chinese_prose_at_sentence_ends_within_the_budget(max_tokens: int) -> None:
    doc = ParsedDocument(
        blocks=[Block("heading", "员工手册", 1), Block("heading", "考勤与休假", 2)]
        + [Block("paragraph", p) for p in CHINESE]
    )
    chunks = chunk_document(doc, max_tokens=max_tokens)
    assert_within_budget(chunks, max_tokens)
    assert {c.heading for c in chunks} == {"员工手册 > 考勤与休假"}
    if max_tokens == 64:
        assert len(chunks) > len(CHINESE)  # paragraphs are over the budget, so they were split
    for chunk in chunks:
        # Every Chinese sentence here fits the budget, so no chunk ends mid-sentence, and none is broken
        # by a stray space.
        assert chunk.text[-1] in "。！？；", chunk.text
        assert " " not in chunk.text
    every_sentence = [s for p in CHINESE for s in p.replace("；", "。").split("。") if s]
    joined = "\n".join(c.text for c in chunks)
    for sentence in every_sentence:
        assert sentence in joined


def test_it_counts_chinese_about_one_token_per_character() -> None:
    text = CHINESE[0]
    assert abs(counter().count(text) - len(text)) <= len(text) // 10
    assert TokenCounter().count(text) == len(text)  # the approximation: one per CJK character
    english = english_paragraph(1)
    approx, exact = TokenCounter().count(english), counter().count(english)
    assert 0.7 * exact <= approx <= 1.5 * exact


def test_it_splits_a_big_table_by_rows_and_repeats_the_header() -> None:
    header = "| Employee ID | Name | Department | Annual leave days |"
    rows = [f"| E{i:04d} | Person {i} | {WORDS[i % len(WORDS)]} | {5 + i % 11} |" for i in range(80)]
    doc = ParsedDocument(
        blocks=[
            Block("heading", "Leave balances", 1),
            Block("paragraph", "The table lists every balance."),
            Block("table", "\n".join([header, *rows]) + "\n\n"),
        ]
    )
    chunks = chunk_document(doc, max_tokens=128)
    assert_within_budget(chunks, 128)
    table_chunks = [c for c in chunks if header in c.text]
    assert len(table_chunks) > 2
    seen: list[str] = []
    for chunk in table_chunks:
        lines = chunk.text.split(header + "\n", 1)[1].split("\n")
        assert all(line in rows for line in lines)  # rows intact, nothing else in the piece
        seen += lines
    assert seen == rows  # every row once, in order: tables do not overlap, they repeat the header
    for chunk in table_chunks[1:]:
        assert chunk.text.startswith(header + "\n")


def test_it_keeps_a_small_table_whole() -> None:
    table = "Plan | Price\nBasic | 10\nPro | 20"
    [chunk] = chunk_document(ParsedDocument(blocks=[Block("table", table)]))
    assert chunk.text == table


def test_it_splits_code_by_lines_and_keeps_indentation() -> None:
    lines: list[str] = []
    for i in range(40):
        lines += [f"def handler_{i}(request, tenant):", f"    return render(request, 'page_{i}.html')", ""]
    code = "\n".join(lines)
    chunks = chunk_document(ParsedDocument(blocks=[Block("code", code)]), max_tokens=80)
    assert len(chunks) > 2
    assert_within_budget(chunks, 80)
    kept = [line for c in chunks for line in c.text.split("\n") if line]
    assert kept == [line for line in lines if line]  # whole lines, in order, no overlap for code
    # A piece may start inside a function; its first line keeps its indentation.
    assert all(c.text.startswith(("def ", "    return ")) for c in chunks)
    assert any(c.text.startswith("    return ") for c in chunks)


def test_it_overlaps_consecutive_chunks_of_a_section_but_not_across_sections() -> None:
    first, second = english_sentences(1, 60), english_sentences(2, 60)
    doc = ParsedDocument(
        blocks=[
            Block("heading", "First", 1),
            Block("paragraph", " ".join(first)),
            Block("heading", "Second", 1),
            Block("paragraph", " ".join(second[:30])),
            Block("paragraph", " ".join(second[30:])),
        ]
    )
    chunks = chunk_document(doc, max_tokens=128, overlap_tokens=32)
    assert_within_budget(chunks, 128)
    for heading, sentences in (("First", first), ("Second", second)):
        section = [c for c in chunks if c.heading == heading]
        assert len(section) >= 3
        assert section[0].text.startswith(sentences[0])  # a section never starts with another's text
        for previous, following in pairwise(section):
            carried = overlap_of(previous.text, following.text)
            # Whole sentences of the previous chunk, about overlap_tokens worth (a single sentence may be
            # up to twice that), then new text.
            assert carried.startswith("Rule ") and carried.endswith("."), (previous.text, following.text)
            assert 0 < counter().count(carried) <= 64
            assert len(following.text) > len(carried)


def overlap_of(previous: str, following: str) -> str:
    """The longest prefix of `following` that is a suffix of `previous`."""
    for size in range(min(len(previous), len(following)), 0, -1):
        if previous.endswith(following[:size]):
            return following[:size]
    return ""


def test_it_does_not_overlap_when_asked_not_to() -> None:
    doc = ParsedDocument(blocks=[Block("paragraph", english_paragraph(5, 40))])
    chunks = chunk_document(doc, max_tokens=96, overlap_tokens=0)
    assert len(chunks) > 2
    assert " ".join(c.text for c in chunks) == english_paragraph(5, 40)


def test_it_cuts_a_single_sentence_that_is_too_long_by_tokens() -> None:
    rng = random.Random(7)
    sentence = " ".join(rng.choice(WORDS) for _ in range(700))  # no punctuation at all
    chinese = "，".join(CHINESE[2].replace("。", "").replace("；", "").split("，") * 6)  # clauses, no 。
    doc = ParsedDocument(
        blocks=[
            Block("heading", "Run-on", 1),
            Block("paragraph", sentence),
            Block("heading", "长句", 1),
            Block("paragraph", chinese),
        ]
    )
    chunks = chunk_document(doc, max_tokens=100)
    assert_within_budget(chunks, 100)
    english = [c.text for c in chunks if c.heading == "Run-on"]
    assert len(english) > 5
    assert " ".join(english) == sentence  # cut between words, nothing repeated or lost
    pieces = [c.text for c in chunks if c.heading == "长句"]
    assert len(pieces) > 3
    assert "".join(pieces) == chinese
    assert all(p.endswith("，") for p in pieces[:-1])  # cut after a clause mark where there is one


def test_it_never_exceeds_the_budget_or_loops_with_a_huge_overlap() -> None:
    blocks = [Block("paragraph", english_paragraph(s, 12)) for s in range(3)]
    blocks += [Block("paragraph", p) for p in CHINESE]
    chunks = chunk_document(ParsedDocument(blocks=blocks), max_tokens=32, overlap_tokens=10_000)
    assert_within_budget(chunks, 32)
    for previous, following in pairwise(chunks):
        assert previous.text != following.text


class ParagraphBreaksCost(TokenCounter):
    """A tokenizer whose counts are not additive: the chunker's estimates undercount with it."""

    def count(self, text: str) -> int:
        return token_counter().count(text) + 5 * text.count("\n\n")


def test_it_keeps_the_budget_with_a_tokenizer_whose_counts_do_not_add_up() -> None:
    doc = ParsedDocument(blocks=[Block("paragraph", f"Paragraph {i} is short.") for i in range(100)])
    odd = ParagraphBreaksCost()
    chunks = chunk_document(doc, max_tokens=64, counter=odd)
    assert len(chunks) > 5
    assert all(c.token_count == odd.count(c.embedding_text) <= 64 for c in chunks)
    text = "\n\n".join(c.text for c in chunks)
    assert all(f"Paragraph {i} is short." in text for i in range(100))


def test_it_is_deterministic_and_an_edit_leaves_other_sections_chunks_unchanged() -> None:
    def document(edited: bool) -> ParsedDocument:
        blocks: list[Block] = [Block("heading", "Handbook", 1)]
        for section in range(3):
            blocks.append(Block("heading", f"Section {section}", 2))
            for p in range(6):
                text = english_paragraph(section * 100 + p)
                if edited and section == 1 and p == 3:
                    text = text.replace("says the", "now says the", 1)
                blocks.append(Block("paragraph", text))
        blocks.append(Block("heading", "中文", 2))
        blocks += [Block("paragraph", p) for p in CHINESE]
        return ParsedDocument(blocks=blocks)

    before = chunk_document(document(edited=False), max_tokens=128)
    assert chunk_document(document(edited=False), max_tokens=128) == before
    after = chunk_document(document(edited=True), max_tokens=128)
    old, new = hashes_by_heading(before), hashes_by_heading(after)
    assert len(old["Handbook > Section 1"]) > 2
    assert old["Handbook > Section 1"] != new["Handbook > Section 1"]
    for heading in ("Handbook > Section 0", "Handbook > Section 2", "Handbook > 中文"):
        assert old[heading] == new[heading]


def test_it_normalises_whitespace_in_prose_but_keeps_newlines_in_tables_and_code() -> None:
    doc = ParsedDocument(
        blocks=[
            Block("paragraph", "  Hello \t  world\n  again\x00 \n"),
            Block("paragraph", "公司实行\n标准工时制度。"),
            Block("code", "\n\nif ok:\n    run()   \n"),
            Block("table", "a  |  b\n\n1  |  2\n"),
        ]
    )
    [chunk] = chunk_document(doc)
    assert chunk.text == "Hello world again\n\n公司实行标准工时制度。\n\nif ok:\n    run()\n\na  |  b\n1  |  2"


def test_it_shortens_a_heading_path_that_would_leave_no_room_for_text() -> None:
    long_title = " ".join(WORDS * 10)
    doc = ParsedDocument(
        blocks=[
            Block("heading", "Handbook", 1),
            Block("heading", long_title, 2),
            Block("paragraph", "Short."),
        ]
    )
    [chunk] = chunk_document(doc, max_tokens=64)
    assert chunk.text == "Short."
    assert chunk.heading.endswith("…")
    assert counter().count(chunk.heading) <= 32
    assert_within_budget([chunk], 64)


def test_it_falls_back_to_an_approximate_counter_without_tokenizer_json(tmp_path: Path) -> None:
    assert token_counter() is token_counter()
    assert token_counter(None) is token_counter("")  # EMBEDDING_MODEL_PATH unset means the bundled model
    approximate = token_counter(str(tmp_path))
    assert not approximate.exact
    assert approximate.count("一二三 four five") == 3 + 3  # 3 CJK + ceil(2 words * 1.3)
    doc = ParsedDocument(blocks=[Block("paragraph", english_paragraph(3, 30))])
    chunks = chunk_document(doc, max_tokens=64, counter=approximate)
    assert len(chunks) > 2
    assert all(c.token_count == approximate.count(c.embedding_text) <= 64 for c in chunks)


def test_it_rejects_a_budget_too_small_to_hold_anything() -> None:
    with pytest.raises(ValueError):
        chunk_document(ParsedDocument(blocks=[Block("paragraph", "x")]), max_tokens=4)
    with pytest.raises(ValueError):
        chunk_document(ParsedDocument(blocks=[Block("paragraph", "x")]), overlap_tokens=-1)
