"""Operator pages for DAG files: `/dags/` (every file, broken ones with their error) and
`/dags/<name>/` (step graph, YAML, run history, Start form).

Rendered complete on the server; the Start form posts back here, so starting a run needs no
JavaScript. The graph is laid out in the browser by the vendored @dagrejs/dagre
(static/controlplane/vendor/dagre) from the JSON `step_graph` gives.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from croniter import croniter
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from rest_framework.exceptions import NotFound, ParseError

from controlplane.core.clock import utcnow
from controlplane.core.rpc.client import wake_coordinator_soon
from controlplane.core.spec import Dag, DagFile, DagSpecError, parse_dag_file
from controlplane.roles import OPERATOR, can_start_runs, denial, viewer_required
from dags.api import (
    dag_files,
    describe_dag_file,
    find_dag_path,
    params_from_request,
    start_dag_run,
)
from dags.models import DagRun
from dags.runs import RunError

RUNS_PER_PAGE = 25


def _dags_dir() -> Path:
    return Path(settings.DAGU.paths.dags_dir).resolve()


def next_run(schedule: list[str], *, now: datetime) -> datetime | None:
    """The earliest next fire time of the DAG's cron expressions (None without a schedule)."""
    times = []
    for expr in schedule:
        try:
            times.append(croniter(expr, now).get_next(datetime))
        except (ValueError, KeyError):
            continue  # the parser already rejects bad expressions; never break the page
    return min(times) if times else None


def dag_matches_search(entry: dict[str, Any], *, query: str) -> bool:
    """Case-insensitive substring of the name, or of a `key=value` of its selector."""
    needle = query.strip().lower()
    if not needle:
        return True
    selector = entry["worker_selector"]
    texts = [entry["name"]]
    if isinstance(selector, dict):
        texts += [f"{k}={v}" for k, v in selector.items()]
    elif selector:
        texts.append(selector)
    return any(needle in text.lower() for text in texts)


def step_graph(dag: Dag) -> dict[str, Any]:
    """Nodes and edges of the step graph: `depends` edges, or file order when no step has
    any; sub-DAG calls carry their child and selector, parallel steps their fan-out."""
    nodes = []
    for step in dag.steps:
        node: dict[str, Any] = {"id": step.name, "kind": step.executor_type}
        if step.call:
            node["call"] = step.call
            node["selector"] = ",".join(f"{k}={v}" for k, v in step.worker_selector.items())
        if step.parallel is not None:
            items = step.parallel.items
            node["fanout"] = len(items) if items is not None else step.parallel.variable
        nodes.append(node)
    if dag.uses_graph:
        edges = [[dep, step.name] for step in dag.steps for dep in step.depends]
    else:
        edges = [[a.name, b.name] for a, b in zip(dag.steps, dag.steps[1:], strict=False)]
    return {"nodes": nodes, "edges": edges}


def run_step_graph(run: DagRun) -> dict[str, Any] | None:
    """The graph of the DAG a run executes, from the YAML stored with the run (the file in
    the DAGs dir may have changed since); None if that text no longer parses."""
    try:
        dag_file = parse_dag_file(run.spec, source=run.source or run.id, default_name=run.dag_name)
    except DagSpecError:
        return None
    dag = dag_file.get(run.dag_name) or dag_file.main
    return step_graph(dag)


def _last_run(name: str) -> DagRun | None:
    # dag_name is indexed: one short range scan per DAG file.
    return DagRun.objects.filter(dag_name=name).order_by("-queued_at").first()


@viewer_required
def dags_page(request: HttpRequest) -> HttpResponse:
    now = utcnow()
    dags_dir = _dags_dir()
    query = request.GET.get("q", "")
    rows = []
    for path in dag_files(dags_dir):
        entry, _ = describe_dag_file(path, dags_dir=dags_dir)
        if not dag_matches_search(entry, query=query):
            continue
        entry["next_run"] = next_run(entry["schedule"], now=now)
        entry["last_run"] = _last_run(entry["name"]) if entry["valid"] else None
        rows.append(entry)
    context = {"active": "dags", "dags": rows, "q": query, "dags_dir": dags_dir}
    return render(request, "pages/dags.html", context)


def _start(request: HttpRequest, dag_file: DagFile, path: str) -> tuple[str | None, str]:
    """Start a run from the form; returns (run id, "") or (None, error line)."""
    main = dag_file.main
    raw = {
        name: request.POST.get(f"param_{name}", default) for name, default in main.params.items()
    }
    try:
        params = params_from_request(raw)
        run = start_dag_run(request, dag_file, params=params, source=path)
    except ParseError as exc:
        return None, str(exc.detail)
    except RunError as exc:
        return None, str(exc)
    wake_coordinator_soon(settings.DAGU)
    return run.id, ""


@viewer_required
def dag_page(request: HttpRequest, name: str) -> HttpResponse:
    # Before any lookup: a viewer's POST is a 403 whether or not the DAG exists.
    if request.method == "POST" and not can_start_runs(request.user):
        raise PermissionDenied(denial(OPERATOR))
    dags_dir = _dags_dir()
    try:
        path = find_dag_path(name, dags_dir=dags_dir)
    except NotFound as exc:
        raise Http404(str(exc.detail)) from None
    entry, dag_file = describe_dag_file(path, dags_dir=dags_dir)
    error = ""
    if request.method == "POST" and dag_file is not None:
        run_id, error = _start(request, dag_file, str(path))
        if run_id:
            return redirect("run-page", run_id=run_id)
    runs = DagRun.objects.filter(dag_name=entry["name"]).order_by("-queued_at", "-id")
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    main = dag_file.main if dag_file else None
    context = {
        "active": "dags",
        "dag": entry,
        "next_run": next_run(entry["schedule"], now=utcnow()),
        "params": list(main.params.items()) if main else [],
        "graph": step_graph(main) if main else None,
        "yaml": path.read_text(encoding="utf-8", errors="replace"),
        "runs": page,
        "start_error": error,
        "can_start": can_start_runs(request.user),
    }
    return render(request, "pages/dag.html", context, status=400 if error else 200)
