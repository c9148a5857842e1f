from __future__ import annotations

from django.urls import path

from knowledge import api

app_name = "api"
urlpatterns = [
    path("knowledge-bases/", api.knowledge_base_list, name="knowledge_bases"),
    path("knowledge-bases/<int:knowledge_base_id>/documents/", api.document_list, name="documents"),
    path("documents/<int:document_id>/", api.document_detail, name="document"),
]
