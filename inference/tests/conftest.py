"""Shared engine fixtures: the bundled SmolLM2 folder and tokenizer, a tiny random Llama.

The engine's tests run without Django too (`-p no:django`); nothing here needs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inference.engine import default_model_dir


@pytest.fixture(scope="session", autouse=True)
def _clean_test_redis(request: pytest.FixtureRequest) -> Iterator[None]:
    """The root conftest's Redis clean-up where Django runs; without Django (the framework-free
    engine's own tests) there is no Redis to clean, and no settings to find it with."""
    if request.config.pluginmanager.hasplugin("django"):
        request.getfixturevalue("_clean_test_redis")  # the root conftest's fixture of this name
    yield


@pytest.fixture(scope="session")
def models_dir() -> Path:
    data = Path(os.environ.get("DSW_DATA_DIR", Path(__file__).resolve().parents[2] / "var"))
    path = data / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def smollm_dir(models_dir: Path) -> Path:
    # Converts the bundled GGUF once (~30 s); later sessions reuse the folder.
    return default_model_dir(models_dir)


@pytest.fixture(scope="session")
def tokenizer(smollm_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm_dir))


@pytest.fixture(scope="session")
def tiny_model(tokenizer: Any) -> Any:
    """A 2-layer random Llama with SmolLM2's vocabulary, in memory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()
