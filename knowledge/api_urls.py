"""The knowledge REST API's URLs; each view is named as its URL."""

from __future__ import annotations

from django.urls import path

from knowledge import api

app_name = "api"
urlpatterns = [
    path("knowledge-bases/", api.knowledge_bases, name="knowledge_bases"),
    path("knowledge-bases/<int:knowledge_base_id>/documents/", api.documents, name="documents"),
    path("documents/<int:document_id>/", api.document, name="document"),
]
