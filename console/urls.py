from __future__ import annotations

from django.urls import path

from console import views

# Each URL is named as its view.
app_name = "console"
urlpatterns = [
    path("", views.home, name="home"),
    path("members/add/", views.user_create, name="user_create"),
    path("members/<int:membership_id>/role/", views.membership_change_role, name="membership_change_role"),
    path("members/<int:membership_id>/active/", views.membership_set_active, name="membership_set_active"),
    path("tenant/", views.tenant_settings_update, name="tenant_settings_update"),
    path("switch/", views.tenant_switch, name="tenant_switch"),
]
