from __future__ import annotations

from django.urls import path

from knowledge import views

app_name = "knowledge"
urlpatterns = [
    path("", views.knowledge_base_list, name="list"),
    path("new/", views.knowledge_base_new, name="create"),
    path("<int:knowledge_base_id>/", views.knowledge_base_detail, name="detail"),
    path("<int:knowledge_base_id>/settings/", views.knowledge_base_settings, name="update"),
    path("<int:knowledge_base_id>/delete/", views.knowledge_base_remove, name="delete"),
    path("<int:knowledge_base_id>/upload/", views.document_upload, name="upload"),
    path("<int:knowledge_base_id>/documents/", views.document_table, name="documents"),
    path("<int:knowledge_base_id>/sources/", views.source_add, name="source_add"),
    path("sources/<int:source_id>/delete/", views.source_remove, name="source_delete"),
    path("sources/<int:source_id>/sync/", views.source_sync_now, name="source_sync"),
    path("documents/<int:document_id>/", views.document_detail, name="document_detail"),
    path("documents/<int:document_id>/delete/", views.document_remove, name="document_delete"),
    path("documents/<int:document_id>/retry/", views.document_retry_view, name="document_retry"),
]
