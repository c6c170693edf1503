"""Operator pages (SPEC section 10): Workers, recent runs, one run.

Each page is rendered complete on the server, so it works without JavaScript; the scripts
in controlplane/static/controlplane/ then refresh it from the REST API (session auth).
The page and the API read the same core functions, so both paints agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from controlplane.core.health import HEALTHY, OFFLINE
from controlplane.core.states import values
from controlplane.dag_pages import run_step_graph
from controlplane.placement import run_placement
from dags.models import TERMINAL_RUN_STATUSES, DagRun, RunStatus
from dags.reports import read_step_log, step_tries
from workers.summary import worker_summaries

RECENT_RUNS = 50
# A run page shows at most this much of each step's log; the API serves the full tail.
PAGE_LOG_LIMIT = 64 * 1024


def relative_age(then: datetime | None, *, now: datetime) -> str:
    """ "5s ago", "3m ago", "2h ago", "4d ago" (the Workers page style); "never" for None."""
    if then is None:
        return "never"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def workers_overview(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """The metric cards. Slots count only workers that are not offline: an offline worker's
    capacity is not available, and counting it would make the fleet look idle."""
    online = [w for w in rows if w["health_status"] != OFFLINE]
    busy = sum(w["busy"] for w in online)
    total = sum(w["max_active_runs"] for w in online)
    return {
        "workers": len(rows),
        "healthy": sum(1 for w in rows if w["health_status"] == HEALTHY),
        "busy": busy,
        "total": total,
        "active_tasks": sum(len(w["running_tasks"]) for w in rows),
        "utilisation": round(busy * 100 / total) if total else 0,
    }


def worker_matches_search(worker: Mapping[str, Any], *, query: str) -> bool:
    """Case-insensitive substring of the id or of any `key=value` label."""
    needle = query.strip().lower()
    if not needle:
        return True
    haystack = [worker["id"], *(f"{k}={v}" for k, v in worker["labels"].items())]
    return any(needle in text.lower() for text in haystack)


def _worker_row(worker: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    last = worker["last_heartbeat"]
    capacity = worker["max_active_runs"]
    return {
        **worker,
        "label_items": [f"{k}={v}" for k, v in sorted(worker["labels"].items())],
        "last_seen": relative_age(datetime.fromisoformat(last) if last else None, now=now),
        "usage_pct": min(100, round(worker["busy"] * 100 / capacity)) if capacity else 0,
        "tasks": [
            {
                **task,
                "age": relative_age(datetime.fromisoformat(task["started_at"]), now=now),
                "is_child": bool(task["parent_dag_run_id"]),
                # The root is worth its own link only when it is not also the parent.
                "show_root": task["root_dag_run_id"]
                not in (task["dag_run_id"], task["parent_dag_run_id"]),
            }
            for task in worker["running_tasks"]
        ],
    }


@staff_member_required
def workers_page(request: HttpRequest) -> HttpResponse:
    now = datetime.now(UTC)
    rows = worker_summaries(now=now, timing=settings.DAGU.timing)
    query = request.GET.get("q", "")
    context = {
        "active": "workers",
        "overview": workers_overview(rows),
        "workers": [_worker_row(w, now=now) for w in rows if worker_matches_search(w, query=query)],
        "any_workers": bool(rows),
        "q": query,
    }
    return render(request, "pages/workers.html", context)


@staff_member_required
def runs_page(request: HttpRequest) -> HttpResponse:
    runs = DagRun.objects.select_related("parent").order_by("-queued_at", "-id")
    status = request.GET.get("status", "")
    if status in values(RunStatus):
        runs = runs.filter(status=status)
    else:
        status = ""
    context = {
        "active": "runs",
        "runs": runs[:RECENT_RUNS],
        "status": status,
        "statuses": values(RunStatus),
        "limit": RECENT_RUNS,
    }
    return render(request, "pages/runs.html", context)


@staff_member_required
def run_page(request: HttpRequest, run_id: str) -> HttpResponse:
    try:
        run = DagRun.objects.select_related("root", "parent").get(pk=run_id)
    except DagRun.DoesNotExist:
        raise Http404(f'run "{run_id}" not found') from None
    log_dir = Path(settings.DAGU.paths.log_dir)
    steps = list(run.steps.order_by("position"))
    context = {
        "active": "runs",
        "run": run,
        "terminal": run.status in TERMINAL_RUN_STATUSES,
        "steps": steps,
        # The last try's log; earlier tries of a retried step are links to the logs API.
        "logs": [
            (s, read_step_log(log_dir, s, limit=PAGE_LOG_LIMIT), range(1, step_tries(s)))
            for s in steps
        ],
        "attempts": run.attempts.order_by("number"),
        "decisions": run.dispatch_decisions.order_by("decided_at", "id"),
        "children": run.children.order_by("queued_at", "id"),
        "graph": run_step_graph(run),
        "placement": run_placement(run, now=datetime.now(UTC), timing=settings.DAGU.timing),
    }
    return render(request, "pages/run.html", context)
