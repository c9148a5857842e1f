from __future__ import annotations

from django.urls import path

from audit import views

# Each URL is named as its view.
app_name = "audit"
urlpatterns = [
    path("", views.event_list, name="event_list"),
    path("events/<int:event_id>/", views.event_detail, name="event_detail"),
    path("export.<str:fmt>", views.event_export, name="event_export"),
]
