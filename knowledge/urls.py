"""The knowledge admin pages' URLs; each view is named as its URL."""

from __future__ import annotations

from django.urls import path

from knowledge import views

app_name = "knowledge"
urlpatterns = [
    path("", views.list, name="list"),
    path("new/", views.create, name="create"),
    path("<int:knowledge_base_id>/", views.detail, name="detail"),
    path("<int:knowledge_base_id>/settings/", views.update, name="update"),
    path("<int:knowledge_base_id>/delete/", views.delete, name="delete"),
    path("<int:knowledge_base_id>/upload/", views.upload, name="upload"),
    path("<int:knowledge_base_id>/documents/", views.documents, name="documents"),
    path("<int:knowledge_base_id>/sources/", views.source_add, name="source_add"),
    path("sources/<int:source_id>/delete/", views.source_delete, name="source_delete"),
    path("sources/<int:source_id>/sync/", views.source_sync, name="source_sync"),
    path("documents/<int:document_id>/", views.document_detail, name="document_detail"),
    path("documents/<int:document_id>/delete/", views.document_delete, name="document_delete"),
    path("documents/<int:document_id>/retry/", views.document_retry, name="document_retry"),
]
