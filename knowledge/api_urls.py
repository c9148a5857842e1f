"""The knowledge REST API's URLs; each view is named as its URL."""

from __future__ import annotations

from django.urls import path

from knowledge import api

app_name = "api"
urlpatterns = [
    path("knowledge-bases/", api.knowledge_base_list, name="knowledge_base_list"),
    path("knowledge-bases/<int:knowledge_base_id>/documents/", api.document_list, name="document_list"),
    path("documents/<int:document_id>/", api.document_detail, name="document_detail"),
]
