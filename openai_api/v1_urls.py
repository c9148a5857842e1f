"""OpenAI's paths, without trailing slashes: clients append "/models" and "/chat/completions" to a base URL."""

from __future__ import annotations

from django.urls import path

from openai_api import views

# Each URL is named as its view.
app_name = "openai"
urlpatterns = [
    path("models", views.model_list, name="model_list"),
    path("models/<str:model_id>", views.model_detail, name="model_detail"),
    path("chat/completions", views.chat_completions, name="chat_completions"),
]
