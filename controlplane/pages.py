"""Operator pages (SPEC section 10): Workers, recent runs, one run.

Each page is rendered complete on the server, so it works without JavaScript; the scripts
in controlplane/static/controlplane/ then refresh it from the REST API (session auth).
The page and the API read the same core functions, so both paints agree.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from controlplane.core.clock import utcnow
from controlplane.core.health import HEALTH_STATES
from controlplane.core.states import values
from controlplane.dag_pages import run_step_graph
from controlplane.lease import HOUSEKEEPING
from controlplane.models import CoordinatorLease
from controlplane.placement import run_placement
from controlplane.roles import MANAGER, can_drain_workers, denial, viewer_required
from dags.models import TERMINAL_RUN_STATUSES, DagRun, RunStatus
from dags.reports import read_step_log_chunk, step_tries
from workers.presence import set_draining
from workers.summary import filtered_workers, fleet_overview, summarize

logger = logging.getLogger(__name__)

RECENT_RUNS = 50
# A run page shows at most this much of each step's log (run.js keeps it so while it
# follows); the API serves the full tail.
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


WORKERS_PER_PAGE = 50


def _workers_query(request: HttpRequest) -> tuple[str, str]:
    """The page's filters: a health state ("" for all, unknown ones ignored) and a search."""
    health = request.GET.get("health", "").upper()
    return (health if health in HEALTH_STATES else ""), request.GET.get("q", "")[:200]


def _page_path(request: HttpRequest) -> str:
    """This page's address without the script's `fragment` flag: where a button returns to."""
    params = request.GET.copy()
    params.pop("fragment", None)
    return f"{request.path}?{params.urlencode()}" if params else request.path


def _housekeeping(*, now: datetime) -> dict[str, Any] | None:
    """Which coordinator does the fleet-wide chores (failover, cron, retention), for the
    page's header: with several coordinators an operator otherwise cannot tell."""
    lease = CoordinatorLease.objects.filter(name=HOUSEKEEPING).first()
    if lease is None or not lease.holder:
        return None
    expired = lease.expires_at is None or lease.expires_at < now
    return {"holder": lease.holder, "fencing": lease.fencing, "expired": expired}


@viewer_required
def workers_page(request: HttpRequest) -> HttpResponse:
    now = utcnow()
    timing = settings.DAGU.timing
    health, query = _workers_query(request)
    workers = filtered_workers(now=now, timing=timing, health=health, query=query)
    page = Paginator(workers, WORKERS_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "active": "workers",
        "overview": fleet_overview(now=now, timing=timing),
        "workers": [_worker_row(w, now=now) for w in summarize(list(page), now=now, timing=timing)],
        "page": page,
        "health": health,
        "health_states": HEALTH_STATES,
        "q": query,
        "can_drain": can_drain_workers(request.user),
        "back": _page_path(request),
        "housekeeping": _housekeeping(now=now),
    }
    # The page's script swaps in the rows and cards of this fragment every second.
    template = "pages/_workers_live.html" if request.GET.get("fragment") else "pages/workers.html"
    return render(request, template, context)


@viewer_required
@require_POST
def worker_drain(request: HttpRequest, worker_id: str, *, draining: bool) -> HttpResponse:
    """The Drain/Undrain buttons; without JavaScript the browser comes back to the page."""
    if not can_drain_workers(request.user):
        raise PermissionDenied(denial(MANAGER))
    if not set_draining(worker_id, draining=draining, by=request.user.get_username()):
        raise Http404(f'worker "{worker_id}" not found')
    logger.info(
        "worker %s %s from the Workers page by %s",
        worker_id,
        "draining" if draining else "undrained",
        request.user,
    )
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
        back = reverse("workers-page")
    return redirect(back)


@viewer_required
def runs_page(request: HttpRequest) -> HttpResponse:
    runs = DagRun.objects.select_related("parent").order_by("-queued_at", "-id")
    status = request.GET.get("status", "")
    if status in values(RunStatus):
        runs = runs.filter(status=status)
    else:
        status = ""
    page = Paginator(runs, RECENT_RUNS).get_page(request.GET.get("page"))
    context = {
        "active": "runs",
        "runs": page,
        "offset": (page.number - 1) * RECENT_RUNS,
        "status": status,
        "statuses": values(RunStatus),
        "limit": RECENT_RUNS,
    }
    return render(request, "pages/runs.html", context)


@viewer_required
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
            (
                s,
                read_step_log_chunk(log_dir, s, limit=PAGE_LOG_LIMIT),
                range(1, step_tries(s)),
                f"{s.attempt}/{step_tries(s)}",
            )
            for s in steps
        ],
        "log_limit": PAGE_LOG_LIMIT,
        "attempts": run.attempts.order_by("number"),
        "decisions": run.dispatch_decisions.order_by("decided_at", "id"),
        "children": run.children.order_by("queued_at", "id"),
        "graph": run_step_graph(run),
        "placement": run_placement(run, now=utcnow(), timing=settings.DAGU.timing),
    }
    return render(request, "pages/run.html", context)
