from __future__ import annotations

from django.urls import path

from audit import views

app_name = "audit"
urlpatterns = [
    path("", views.audit_trail, name="trail"),
    path("events/<int:event_id>/", views.audit_event_detail, name="event"),
    path("export.<str:fmt>", views.audit_export, name="export"),
]
