from __future__ import annotations

from django.urls import path

from chat import views

# Each URL is named as its view.
app_name = "chat"
urlpatterns = [
    path("", views.home, name="home"),
    path("c/new/", views.conversation_create, name="conversation_create"),
    path("c/<int:conversation_id>/", views.conversation_detail, name="conversation_detail"),
    path("c/<int:conversation_id>/rename/", views.conversation_rename, name="conversation_rename"),
    path("c/<int:conversation_id>/delete/", views.conversation_delete, name="conversation_delete"),
    path("c/<int:conversation_id>/knowledge/", views.conversation_set_knowledge_bases,
         name="conversation_set_knowledge_bases"),
]
