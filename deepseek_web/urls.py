from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from deepseek_web import views
from tenants.admin_site import admin_site_permission

admin.site.has_permission = admin_site_permission  # type: ignore[method-assign]
admin.site.site_header = "DeepSeek Web administration"

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("audit/", include("audit.urls")),
    path("settings/api-keys/", include("openai_api.urls")),
    path("settings/", include("console.urls")),
    path("knowledge/", include("knowledge.urls")),
    path("api/schema/", views.api_schema, name="api_schema"),
    path("api/v1/", include("knowledge.api_urls")),
    # The OpenAI-compatible API, at the path OpenAI clients expect under a base URL.
    path("v1/", include("openai_api.v1_urls")),
    path("", include("chat.urls")),
]
