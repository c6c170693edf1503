"""URL map: admin, the operator pages, and the REST API under /api/v2/."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView

from controlplane import api_errors, dag_pages, pages
from controlplane.metrics import MetricsView
from controlplane.roles import ViewerRequired
from dags import api as dags_api
from workers import api as workers_api

# Worker ids are "<host>@<pid>" by default but operators may pick any string, so they use
# the `path` converter; the drain/undrain routes come first so they win over the detail.
api_urlpatterns = [
    path("workers", workers_api.WorkerListView.as_view(), name="api-workers"),
    path(
        "workers/<path:worker_id>/drain",
        workers_api.WorkerDrainView.as_view(),
        name="api-worker-drain",
    ),
    path(
        "workers/<path:worker_id>/undrain",
        workers_api.WorkerUndrainView.as_view(),
        name="api-worker-undrain",
    ),
    path("workers/<path:worker_id>", workers_api.WorkerDetailView.as_view(), name="api-worker"),
    path("dag-runs", dags_api.DagRunListView.as_view(), name="api-dag-runs"),
    path("dag-runs/<str:run_id>", dags_api.DagRunDetailView.as_view(), name="api-dag-run"),
    path(
        "dag-runs/<str:run_id>/cancel",
        dags_api.DagRunCancelView.as_view(),
        name="api-dag-run-cancel",
    ),
    path(
        "dag-runs/<str:run_id>/retry", dags_api.DagRunRetryView.as_view(), name="api-dag-run-retry"
    ),
    path("dag-runs/<str:run_id>/logs", dags_api.DagRunLogsView.as_view(), name="api-dag-run-logs"),
    path("dags", dags_api.DagListView.as_view(), name="api-dags"),
    path("dags/<str:name>", dags_api.DagDetailView.as_view(), name="api-dag"),
    path(
        "schema/",
        SpectacularAPIView.as_view(permission_classes=[ViewerRequired]),
        name="api-schema",
    ),
    # Last: any other path under /api/v2/ is a JSON 404, not Django's HTML page.
    re_path(r"^(?P<path>(?s:.*))$", api_errors.not_found, name="api-not-found"),
]

handler404 = api_errors.page_not_found
handler500 = api_errors.server_error

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="workers-page", permanent=False)),
    path("workers/", pages.workers_page, name="workers-page"),
    path(
        "workers/<path:worker_id>/drain",
        pages.worker_drain,
        {"draining": True},
        name="worker-drain",
    ),
    path(
        "workers/<path:worker_id>/undrain",
        pages.worker_drain,
        {"draining": False},
        name="worker-undrain",
    ),
    path("runs/", pages.runs_page, name="runs-page"),
    path("dags/", dag_pages.dags_page, name="dags-page"),
    path("dags/<str:name>/", dag_pages.dag_page, name="dag-page"),
    path("runs/<str:run_id>/", pages.run_page, name="run-page"),
    path("metrics", MetricsView.as_view(), name="metrics"),
    path("admin/", admin.site.urls),
    path("api/v2/", include(api_urlpatterns)),
]
