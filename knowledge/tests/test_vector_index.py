"""Any embedding dimension: a model configured by EMBEDDING_MODEL_PATH gets its own HNSW index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.apps import apps
from django.db import connection

from inference.engine import default_embedding_dir, embedding_dimensions
from knowledge.apps import ensure_configured_vector_index
from knowledge.vector_index import index_name
from tenants.rls import as_owner


def test_it_reads_the_dimension_of_an_embedding_model_folder(tmp_path: Path) -> None:
    assert embedding_dimensions(default_embedding_dir()) == 384
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 1024}))
    assert embedding_dimensions(tmp_path) == 1024
    (tmp_path / "2_Dense").mkdir()
    (tmp_path / "2_Dense" / "config.json").write_text(json.dumps({"out_features": 768}))
    (tmp_path / "modules.json").write_text(json.dumps([
        {"path": "", "type": "sentence_transformers.models.Transformer"},
        {"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    assert embedding_dimensions(tmp_path) == 768


@pytest.mark.django_db(transaction=True)
def test_it_indexes_the_configured_models_dimension_after_migrate(settings, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 1024}))
    settings.EMBEDDING_MODEL_PATH = str(tmp_path)
    try:
        with as_owner():
            ensure_configured_vector_index(apps.get_app_config("knowledge"))
            with connection.cursor() as cursor:
                cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [index_name(1024)])
                [definition] = cursor.fetchone()
    finally:
        with as_owner(), connection.cursor() as cursor:
            cursor.execute(f"DROP INDEX IF EXISTS {index_name(1024)}")
    assert "hnsw" in definition and "vector(1024)" in definition and "embedding_dim = 1024" in definition
