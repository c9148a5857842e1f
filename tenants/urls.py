from __future__ import annotations

from django.urls import path

from tenants import views

app_name = "tenants"
urlpatterns = [
    path("", views.console, name="console"),
    path("members/add/", views.member_add, name="member_add"),
    path("members/<int:membership_id>/role/", views.member_role, name="member_role"),
    path("members/<int:membership_id>/active/", views.member_active, name="member_active"),
    path("tenant/", views.settings_update, name="settings_update"),
    path("switch/", views.tenant_switch, name="switch"),
]
