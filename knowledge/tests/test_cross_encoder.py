"""KNOWLEDGE_RERANKER_PATH: a cross-encoder from a local folder replaces the default reranker.

No cross-encoder ships as a package, so the test builds a tiny random one with the bundled
MiniLM's tokenizer: its scores mean nothing, but the loading, scoring and ordering are real.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from knowledge.rerank import CrossEncoderReranker, EmbeddingReranker, default_reranker
from knowledge.retrieval import Passage


@pytest.fixture
def tiny_cross_encoder(tmp_path: Path) -> str:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from inference.engine import default_embedding_dir

    tokenizer = AutoTokenizer.from_pretrained(str(default_embedding_dir()))
    torch.manual_seed(5)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64)
    config.num_labels = 1  # one relevance score per pair, as cross-encoders have
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return str(tmp_path)


@pytest.fixture
def reranker_path(settings, tiny_cross_encoder: str) -> Iterator[str]:
    from inference import runtime

    runtime.shutdown_reranker()
    settings.KNOWLEDGE_RERANKER_PATH = tiny_cross_encoder
    yield tiny_cross_encoder
    runtime.shutdown_reranker()


def passage(i: int, text: str) -> Passage:
    return Passage(chunk_id=i, document_id=1, knowledge_base_id=1, document_title="d", ordinal=i, heading="",
                   text=text, page=None, score=0.0)


def test_it_uses_our_embedding_reranker_when_no_cross_encoder_is_configured(settings) -> None:
    settings.KNOWLEDGE_RERANKER_PATH = ""
    assert isinstance(default_reranker(), EmbeddingReranker)


def test_it_reranks_with_the_configured_cross_encoder(reranker_path: str) -> None:
    from inference import runtime

    reranker = default_reranker()
    assert isinstance(reranker, CrossEncoderReranker)
    texts = ["Lost laptops go to the service desk.", "The cafeteria opens at noon.", "Passwords have 14 characters."]
    chosen = reranker.rerank("lost laptop", [0.0], [passage(i, t) for i, t in enumerate(texts)], k=2)
    expected = runtime.get_reranker().score("lost laptop", texts)
    assert [p.chunk_id for p in chosen] == sorted(range(3), key=lambda i: -expected[i])[:2]
    assert [p.score for p in chosen] == sorted((expected[i] for i in range(3)), reverse=True)[:2]
