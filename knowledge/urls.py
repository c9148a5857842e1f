"""The knowledge admin pages' URLs; each view is named as its URL."""

from __future__ import annotations

from django.urls import path

from knowledge import views

app_name = "knowledge"
urlpatterns = [
    path("", views.knowledge_base_list, name="knowledge_base_list"),
    path("new/", views.knowledge_base_create, name="knowledge_base_create"),
    path("<int:knowledge_base_id>/", views.knowledge_base_detail, name="knowledge_base_detail"),
    path("<int:knowledge_base_id>/settings/", views.knowledge_base_update, name="knowledge_base_update"),
    path("<int:knowledge_base_id>/delete/", views.knowledge_base_delete, name="knowledge_base_delete"),
    path("<int:knowledge_base_id>/upload/", views.document_upload, name="document_upload"),
    path("<int:knowledge_base_id>/documents/", views.document_list, name="document_list"),
    path("<int:knowledge_base_id>/sources/", views.source_create, name="source_create"),
    path("sources/<int:source_id>/delete/", views.source_delete, name="source_delete"),
    path("sources/<int:source_id>/sync/", views.source_sync, name="source_sync"),
    path("documents/<int:document_id>/", views.document_detail, name="document_detail"),
    path("documents/<int:document_id>/delete/", views.document_delete, name="document_delete"),
    path("documents/<int:document_id>/retry/", views.document_retry, name="document_retry"),
]
