from __future__ import annotations

from django.urls import path

from openai_api import console_views

app_name = "apikeys"
urlpatterns = [
    path("", console_views.api_keys, name="list"),
    path("new/", console_views.api_key_new, name="create"),
    path("<int:api_key_id>/revoke/", console_views.api_key_revoke, name="revoke"),
]
