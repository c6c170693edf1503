"""URL map: admin, the operator pages, and the REST API under /api/v2/."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
]
