"""The knowledge app's configuration: after `migrate`, the HNSW index of the configured embedding model."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def ensure_configured_vector_index(sender: AppConfig, **kwargs: Any) -> None:
    """After `migrate` (which runs as the owner role): the HNSW index for EMBEDDING_MODEL_PATH's
    dimension, when that is not the bundled MiniLM's 384 that the migration already indexes."""
    from pathlib import Path

    from django.conf import settings

    from inference.engine import embedding_dimensions
    from knowledge.vector_index import DEFAULT_DIMENSION, ensure_index

    if not settings.EMBEDDING_MODEL_PATH:
        return
    dimension = embedding_dimensions(Path(settings.EMBEDDING_MODEL_PATH).expanduser())
    if dimension and dimension != DEFAULT_DIMENSION:
        ensure_index(dimension)


class KnowledgeConfig(AppConfig):
    name = "knowledge"

    def ready(self) -> None:
        post_migrate.connect(ensure_configured_vector_index, sender=self)
