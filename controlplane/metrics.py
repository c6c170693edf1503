"""`/metrics` in the Prometheus text format, read from the database at each scrape.

Every value comes from the database rather than from process memory, so every coordinator
and web replica reports the same fleet, and a scrape of any of them is the whole truth.
The "counters" are counts of rows (finished runs, failover decisions, stored heartbeat
counts): retention pruning or a purged worker lowers them, which Prometheus's `rate()`
treats as a counter reset.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Min, Q, Sum
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from controlplane.core.clock import utcnow
from controlplane.core.config import TimingConfig
from controlplane.core.health import DISPATCHABLE, HEALTH_STATES, OFFLINE
from controlplane.core.labels import format_labels, matches
from controlplane.models import CoordinatorLease, DecisionEvent, DispatchDecision
from controlplane.placement import FleetWorker, fleet_from_db
from controlplane.roles import ViewerRequired
from dags.models import TERMINAL_RUN_STATUSES, Attempt, DagRun, ExecutionMode, RunStatus
from workers.models import Worker

# Queued-to-claimed seconds: a healthy fleet claims within a second; minutes mean a backlog.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
FAILOVER_EVENTS = (DecisionEvent.REDISPATCHED, DecisionEvent.FAILED_WORKER_LOST)
LOCAL_SELECTOR = "local"


def worker_gauges(fleet: Sequence[FleetWorker]) -> tuple[dict[str, int], dict[str, int]]:
    """Workers per health state, and busy/free slots of the workers that are not offline."""
    health = dict.fromkeys((h.lower() for h in HEALTH_STATES), 0)
    slots = {"busy": 0, "free": 0}
    for worker in fleet:
        health[worker.health.lower()] += 1
        if worker.health != OFFLINE:
            slots["busy"] += worker.busy
            slots["free"] += max(0, worker.capacity - worker.busy)
    return health, slots


@dataclass
class Backlog:
    """Queued runs sharing one selector."""

    selector: dict[str, str] | None  # None for local runs
    depth: int = 0
    oldest_age: float = 0.0


def queue_by_selector(*, now: datetime) -> dict[str, Backlog]:
    """Queued runs per selector label (`k=v,...`, "" for none, "local" for local runs)."""
    rows = (
        DagRun.objects.filter(status=RunStatus.QUEUED, cancel_requested=False)
        .order_by()
        .values("execution_mode", "worker_selector")
        .annotate(n=Count("id"), oldest=Min("queued_at"))
        .values_list("execution_mode", "worker_selector", "n", "oldest")
    )
    out: dict[str, Backlog] = {}
    for mode, selector, n, oldest in rows:
        local = mode == ExecutionMode.LOCAL
        # Key order can differ between rows holding the same selector; format_labels sorts.
        key = LOCAL_SELECTOR if local else format_labels(selector or {})
        backlog = out.setdefault(key, Backlog(None if local else dict(selector or {})))
        backlog.depth += n
        backlog.oldest_age = max(backlog.oldest_age, (now - oldest).total_seconds())
    return out


def pool_by_selector(queue: Mapping[str, Backlog], fleet: Sequence[FleetWorker]) -> dict[str, int]:
    """For each queued distributed selector, the workers that could serve it: matching
    labels, dispatchable health, not draining (busy ones count: they free up)."""
    return {
        key: sum(
            1
            for w in fleet
            if w.health in DISPATCHABLE and not w.draining and matches(w.labels, backlog.selector)
        )
        for key, backlog in queue.items()
        if backlog.selector is not None
    }


def finished_runs() -> dict[str, int]:
    counts = dict.fromkeys(sorted(TERMINAL_RUN_STATUSES), 0)
    rows = (
        DagRun.objects.filter(status__in=TERMINAL_RUN_STATUSES)
        .order_by()
        .values("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    counts.update(dict(rows))
    return counts


def dispatch_latency() -> tuple[list[tuple[str, int]], float]:
    """Cumulative buckets and sum of seconds from queued to the first distributed claim."""
    latency = ExpressionWrapper(F("created_at") - F("run__queued_at"), output_field=DurationField())
    qs = Attempt.objects.filter(mode=ExecutionMode.DISTRIBUTED, number=1).annotate(wait=latency)
    aggregates = {
        f"le{i}": Count("id", filter=Q(wait__lte=timedelta(seconds=b)))
        for i, b in enumerate(LATENCY_BUCKETS)
    }
    result = qs.aggregate(total=Count("id"), seconds=Sum("wait"), **aggregates)
    buckets = [(_le(b), result[f"le{i}"]) for i, b in enumerate(LATENCY_BUCKETS)]
    buckets.append(("+Inf", result["total"]))
    seconds = result["seconds"].total_seconds() if result["seconds"] is not None else 0.0
    return buckets, max(0.0, seconds)


def _le(bound: float) -> str:
    return repr(float(bound))


class DatabaseCollector(Collector):
    """The fleet and queue metrics, computed from the database on each collect()."""

    def __init__(self, *, timing: TimingConfig) -> None:
        self.timing = timing

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        now = utcnow()
        fleet = fleet_from_db(now=now, timing=self.timing)
        health, slots = worker_gauges(fleet)
        workers = GaugeMetricFamily("dagu_workers", "Known workers by health", labels=["health"])
        for state, n in health.items():
            workers.add_metric([state], n)
        yield workers
        slot_family = GaugeMetricFamily(
            "dagu_worker_slots", "Run slots of workers that are not offline", labels=["state"]
        )
        for state, n in slots.items():
            slot_family.add_metric([state], n)
        yield slot_family

        queue = queue_by_selector(now=now)
        depth = GaugeMetricFamily(
            "dagu_queue_depth", "Queued runs per worker selector", labels=["selector"]
        )
        oldest = GaugeMetricFamily(
            "dagu_queue_oldest_age_seconds",
            "Age of the oldest queued run per worker selector",
            labels=["selector"],
        )
        for selector, backlog in sorted(queue.items()):
            depth.add_metric([selector], backlog.depth)
            oldest.add_metric([selector], backlog.oldest_age)
        yield depth
        yield oldest
        pool = GaugeMetricFamily(
            "dagu_selector_workers",
            "Workers that could take runs of a queued selector (matching, healthy, not draining)",
            labels=["selector"],
        )
        for selector, n in sorted(pool_by_selector(queue, fleet).items()):
            pool.add_metric([selector], n)
        yield pool

        finished = CounterMetricFamily(
            "dagu_runs_finished", "Runs that reached a final status", labels=["status"]
        )
        for status, n in finished_runs().items():
            finished.add_metric([status], n)
        yield finished

        buckets, seconds = dispatch_latency()
        yield HistogramMetricFamily(
            "dagu_dispatch_latency_seconds",
            "Seconds from a run being queued to its first claim by a worker",
            buckets=buckets,
            sum_value=seconds,
        )
        yield CounterMetricFamily(
            "dagu_failovers",
            "Attempts lost with their worker (redispatched or failed)",
            value=DispatchDecision.objects.filter(event__in=FAILOVER_EVENTS).count(),
        )
        total = Worker.objects.aggregate(n=Sum("heartbeats"))["n"] or 0
        yield CounterMetricFamily(
            "dagu_heartbeats", "gRPC heartbeats received from known workers", value=total
        )
        yield from lease_gauges(now=now)


def lease_gauges(*, now: datetime) -> Iterator[GaugeMetricFamily]:
    """Who holds each coordinator lease (housekeeping: failover, cron, retention) and for how
    much longer: with several coordinators, the one place an operator sees which does it."""
    fencing = GaugeMetricFamily(
        "dagu_coordinator_lease_fencing",
        "Fencing number of a coordinator lease (one more at each change of holder), "
        "labelled with its holder (host:pid:token, empty once released)",
        labels=["lease", "holder"],
    )
    expires = GaugeMetricFamily(
        "dagu_coordinator_lease_expires_in_seconds",
        "Seconds left in the lease holder's term; negative when its holder stopped renewing "
        "and no other coordinator took it over",
        labels=["lease"],
    )
    for lease in CoordinatorLease.objects.order_by("name"):
        fencing.add_metric([lease.name, lease.holder], lease.fencing)
        if lease.expires_at is not None:
            expires.add_metric([lease.name], (lease.expires_at - now).total_seconds())
    yield fencing
    yield expires


def render_metrics(*, timing: TimingConfig) -> bytes:
    """The exposition text; a fresh registry per scrape keeps no state between requests."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(timing=timing))
    return generate_latest(registry)


class MetricsPermission(ViewerRequired):
    """A viewer's token or session, unless `metrics.public: true` opens it to scrapers."""

    def has_permission(self, request: Request, view: object) -> bool:
        return settings.DAGU.metrics.public or super().has_permission(request, view)


class PlainText(BaseContentNegotiation):
    """Scrapers send many Accept headers; the answer is always the text format (or a JSON
    error from the first renderer), never a 406."""

    def select_parser(self, request: Request, parsers: list[BaseParser]) -> BaseParser | None:
        return parsers[0] if parsers else None

    def select_renderer(
        self, request: Request, renderers: list[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        return renderers[0], renderers[0].media_type


class MetricsView(APIView):
    permission_classes = [MetricsPermission]
    content_negotiation_class = PlainText

    @extend_schema(
        operation_id="getMetrics",
        description="Prometheus text exposition of fleet, queue and run metrics; needs a "
        "token or session unless metrics.public is true.",
        responses={
            (200, "text/plain"): OpenApiResponse(OpenApiTypes.STR, description="metrics"),
        },
    )
    def get(self, request: Request) -> HttpResponse:
        body = render_metrics(timing=settings.DAGU.timing)
        return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
