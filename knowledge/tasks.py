"""Celery tasks of the knowledge app: thin wrappers that run the pipeline's steps and the source syncs."""

from __future__ import annotations

from celery import shared_task

from knowledge.services import pipeline, sources


@shared_task(name="knowledge.tasks.ingest_document")
def ingest_document(*, tenant_id: int, document_id: int) -> None:
    pipeline.document_ingest(tenant_id=tenant_id, document_id=document_id)


@shared_task(name="knowledge.tasks.embed_document")
def embed_document(*, tenant_id: int, document_id: int) -> None:
    pipeline.document_embed(tenant_id=tenant_id, document_id=document_id)


@shared_task(name="knowledge.tasks.sync_source")
def sync_source(*, tenant_id: int, source_id: int) -> None:
    sources.source_sync(tenant_id=tenant_id, source_id=source_id)


@shared_task(name="knowledge.tasks.sync_due_sources")
def sync_due_sources() -> int:
    return sources.sources_sync_due()


@shared_task(name="knowledge.tasks.sweep_stale_documents")
def sweep_stale_documents() -> int:
    return pipeline.documents_sweep_stale()
