from __future__ import annotations

from django.urls import path

from openai_api import api_key_views

# Each URL is named as its view.
app_name = "apikeys"
urlpatterns = [
    path("", api_key_views.api_key_list, name="api_key_list"),
    path("new/", api_key_views.api_key_create, name="api_key_create"),
    path("<int:api_key_id>/revoke/", api_key_views.api_key_revoke, name="api_key_revoke"),
]
