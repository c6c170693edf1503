"""Several coordinators on one database (docs/design.md, "Several coordinators").

The lease and the cron claims are database tests (both lanes: the same code path holds on
SQLite); the real-process tests need PostgreSQL and skip on SQLite, except the one that
shows SQLite refusing a second coordinator.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection, transaction

from controlplane.core.config import resolve
from controlplane.core.spec import parse_dag_file
from controlplane.lease import (
    EXECUTOR_STALE_SECONDS,
    LEASE_SECONDS,
    executor_row_name,
    hold_lease,
    new_holder_id,
    release_lease,
    renew_executor,
    stale_executors,
)
from controlplane.models import CoordinatorLease, CronTick
from dags import wakeups
from dags.local import recover_dead_coordinators_local_attempts, retire_executor
from dags.models import Attempt, DagRun
from dags.runs import create_run, start_attempt
from dags.scheduler import CATCH_UP_SECONDS, CronScheduler
from tests.procs import FAST_TIMING, PG_LANE, Cluster, wait_for, write_dag
from workers.models import Worker
from workers.presence import set_draining

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
STEP = "steps:\n  - name: a\n    command: echo $WORKER_ID\n"
needs_pg = pytest.mark.skipif(not PG_LANE, reason="several coordinators need PostgreSQL")


# --- the lease ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_one_holder_at_a_time_and_a_new_fencing_number_at_each_takeover():
    a = hold_lease("a", now=T0)
    assert a is not None and a.fencing == 1
    assert hold_lease("b", now=T0 + timedelta(seconds=1)) is None
    # The holder renews; the term moves, the fencing number does not.
    renewed = hold_lease("a", now=T0 + timedelta(seconds=2))
    assert renewed is not None and renewed.fencing == 1
    # A silent holder loses the lease once its term ends, and cannot renew it back.
    later = T0 + timedelta(seconds=2 + LEASE_SECONDS + 0.1)
    b = hold_lease("b", now=later)
    assert b is not None and (b.holder, b.fencing) == ("b", 2)
    assert hold_lease("a", now=later + timedelta(seconds=0.1)) is None
    row = CoordinatorLease.objects.get()
    assert (row.holder, row.fencing) == ("b", 2)


@pytest.mark.django_db
def test_a_released_lease_is_taken_at_once():
    assert hold_lease("a", now=T0) is not None
    assert release_lease("a", now=T0 + timedelta(seconds=1))
    b = hold_lease("b", now=T0 + timedelta(seconds=1))
    assert b is not None and b.fencing == 2


@pytest.mark.django_db
def test_sqlite_sole_coordinator_takes_the_lease_without_waiting():
    assert hold_lease("before-restart", now=T0) is not None
    again = hold_lease("after-restart", now=T0 + timedelta(seconds=1), force=True)
    assert again is not None and again.fencing == 2


# --- cron ticks fire once across schedulers ---------------------------------------------------


def every_minute(tmp_path: Path):
    dags = tmp_path / "dags"
    dags.mkdir()
    write_dag(dags, "minutely", "schedule: '* * * * *'\nsteps:\n  - name: a\n    command: 'true'\n")
    return resolve(env={"DAGU_HOME": str(tmp_path), "DAGU_DAGS_DIR": str(dags)})


@pytest.mark.django_db
def test_two_schedulers_racing_fire_each_tick_once(tmp_path: Path):
    config = every_minute(tmp_path)
    start = T0 + timedelta(seconds=1)
    a = CronScheduler(config, now=start, on_queued=lambda: None)
    b = CronScheduler(config, now=start, on_queued=lambda: None)
    # Three minutes: both tick every 20 s (an old holder that has not seen it lost the lease
    # and the new one); each minute's tick is claimed once.
    fired = 0
    for second in range(20, 181, 20):
        now = start + timedelta(seconds=second)
        fired += a.tick(now=now, fencing=1) + b.tick(now=now, fencing=2)
    assert fired == 3
    assert DagRun.objects.filter(dag_name="minutely").count() == 3
    ticks = CronTick.objects.order_by("due_at")
    assert [t.due_at for t in ticks] == [T0 + timedelta(minutes=m) for m in (1, 2, 3)]
    assert all(t.run_id for t in ticks)


@pytest.mark.django_db
def test_a_new_holder_fires_the_tick_due_while_the_lease_changed_hands(tmp_path: Path):
    config = every_minute(tmp_path)
    old = CronScheduler(config, now=T0, on_queued=lambda: None)
    new = CronScheduler(config, now=T0, on_queued=lambda: None)
    # The old holder fires 12:01 and dies at 12:01:58; the new one stands by meanwhile.
    assert old.tick(now=T0 + timedelta(seconds=61), fencing=1) == 1
    for second in range(0, 125, 5):
        new.stand_by(now=T0 + timedelta(seconds=second))
    # It takes over at 12:02:06, after the 12:02 tick: fires it, and not 12:01 again.
    assert CATCH_UP_SECONDS > 10
    assert new.tick(now=T0 + timedelta(seconds=126), fencing=2) == 1
    assert sorted(CronTick.objects.values_list("due_at", "fencing")) == [
        (T0 + timedelta(minutes=1), 1),
        (T0 + timedelta(minutes=2), 2),
    ]


# --- real processes ---------------------------------------------------------------------------


def api(url: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def api_token(cluster: Cluster) -> str:
    created = cluster.manage("create_api_token", "ops", "--role", "manager")
    assert created.returncode == 0, created.stderr
    return created.stdout.strip().splitlines()[-1]


def lease_row(cluster: Cluster) -> dict | None:
    rows = cluster.query("SELECT * FROM controlplane_coordinatorlease WHERE name = 'housekeeping'")
    return dict(rows[0]) if rows else None


def holder_pid(row: dict | None) -> int | None:
    if not row or not row["holder"]:
        return None
    return int(row["holder"].split(":")[1])


@pytest.mark.processes
def test_sqlite_refuses_a_second_coordinator_with_one_line(cluster: Cluster):
    if PG_LANE:
        pytest.skip("SQLite only: PostgreSQL takes several coordinators")
    cluster.start_coordinator()
    second = cluster.spawn("second", "coordinator")
    assert second.wait(timeout=60) == 2
    lines = [line for line in cluster.log("second").splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "several coordinators need PostgreSQL" in lines[0]
    # The first one is untouched, and after a kill -9 a new one starts (no stale lock).
    assert cluster.procs["coordinator"].poll() is None
    cluster.kill("coordinator")
    cluster.start_coordinator("coordinator-2")


def create_runs(web: int, token: str, dag: str, count: int) -> list[str]:
    """`count` runs of `dag` through the API, four requests at a time (as several clients)."""

    def one(_: int) -> str:
        status, body = api(f"http://127.0.0.1:{web}/api/v2/dag-runs", token, {"dag": dag})
        assert status == 201, body
        return str(body["dag_run_id"])

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, range(count)))


def marked(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def succeeded(cluster: Cluster) -> int:
    return int(
        cluster.query("SELECT count(*) AS n FROM dags_dagrun WHERE status = 'succeeded'")[0]["n"]
    )


def assert_each_ran_once(cluster: Cluster, run_ids: list[str], marks: Path) -> None:
    """One succeeded attempt per run, and its step started and ended once (no double)."""
    attempts = cluster.query("SELECT run_id, status FROM dags_attempt")
    wins = Counter(a["run_id"] for a in attempts if a["status"] == "succeeded")
    assert all(wins[run_id] == 1 for run_id in run_ids), [r for r in run_ids if wins[r] != 1]
    lines = Counter(marked(marks))
    twice = [r for r in run_ids if (lines[f"start-{r}"], lines[f"end-{r}"]) != (1, 1)]
    assert not twice, [(r, lines[f"start-{r}"], lines[f"end-{r}"]) for r in twice]


ISSUE_RUNS = 200  # the issue's size for both tests below


@needs_pg
@pytest.mark.processes
def test_runs_from_the_api_run_once_over_both_coordinators_workers(
    cluster: Cluster, tmp_path: Path
):
    c = cluster
    (c.home / "dags").mkdir(exist_ok=True)
    marks = tmp_path / "marks"
    # An instant step that leaves a trace of each time it ran, so a doubled run shows.
    write_dag(
        c.home / "dags",
        "spread",
        "workerSelector:\n  pool: x\nsteps:\n  - name: a\n"
        f"    command: sh -c 'echo start-$DAG_RUN_ID end-$DAG_RUN_ID >> {marks}'\n",
    )
    c.start_coordinator("c1")
    port2 = c.start_peer_coordinator("c2")
    web = c.start_web()
    workers = {"a1": c.port, "a2": c.port, "b1": port2, "b2": port2}
    for worker_id, port in workers.items():
        c.start_worker(worker_id, "pool=x", max_runs=3, port=port)
    run_ids = create_runs(web, api_token(c), "spread", ISSUE_RUNS)
    assert len(set(run_ids)) == ISSUE_RUNS
    wait_for(
        lambda: succeeded(c) == ISSUE_RUNS, timeout=180, what="every run to succeed", every=0.5
    )
    attempts = c.query("SELECT run_id, worker_id FROM dags_attempt")
    assert sorted(a["run_id"] for a in attempts) == sorted(run_ids)  # one attempt each
    assert_each_ran_once(c, run_ids, marks)
    used = Counter(a["worker_id"] for a in attempts)
    assert set(used) & {"a1", "a2"} and set(used) & {"b1", "b2"}, used
    # One of the two holds the housekeeping lease.
    pid = holder_pid(lease_row(c))
    assert pid in {c.procs["c1"].pid, c.procs["c2"].pid}


@needs_pg
@pytest.mark.processes
def test_killing_the_lease_holder_hands_housekeeping_over_and_failover_still_happens(
    tmp_path: Path, db_template: Path
):
    c = Cluster(tmp_path / "home", db_template, extra_env=FAST_TIMING)
    try:
        (c.home / "dags").mkdir(exist_ok=True)
        marks = tmp_path / "marks"
        dag = write_dag(
            c.home / "dags",
            "long",
            "workerSelector:\n  pool: x\nsteps:\n  - name: a\n"
            f"    command: sh -c 'echo $WORKER_ID >> {marks}; sleep 8'\n",
        )
        c.start_coordinator("c1")
        port2 = c.start_peer_coordinator("c2")
        first = wait_for(lambda: lease_row(c), timeout=30, what="a lease holder")
        holder = holder_pid(first)
        assert holder == c.procs["c1"].pid  # the first one up took it
        c.start_worker("doomed", "pool=x", max_runs=1, port=port2)
        run_id = c.start_run(dag)
        wait_for(lambda: marks.exists(), timeout=30, what="the run to start on doomed")
        c.start_worker("rescuer", "pool=x", max_runs=1, port=port2)
        # The housekeeping leader and the worker die together.
        c.kill("c1")
        c.kill("doomed")
        taken = wait_for(
            lambda: (row := lease_row(c)) and holder_pid(row) == c.procs["c2"].pid and row,
            timeout=10 + 2,  # expiry (6 s) plus one renewal round, with scheduling slack
            what="the other coordinator to take the lease",
            every=0.2,
        )
        assert taken["fencing"] == first["fencing"] + 1
        unhealthy = float(FAST_TIMING["DAGU_HEALTH_UNHEALTHY_AFTER"])
        wait_for(
            lambda: (row := c.run_row(run_id)) and row["attempt"] == 2,
            timeout=unhealthy + 10 + 2,  # its thresholds plus the lease handover
            what="the lost worker's run to be redispatched",
            every=0.2,
        )
        row = c.wait_run(run_id, timeout=60)
        assert (row["status"], row["worker_id"]) == ("succeeded", "rescuer")
        assert c.procs["c2"].poll() is None
    finally:
        c.close()


def executor_rows(cluster: Cluster) -> set[str]:
    """Holders of the local executors' liveness rows (controlplane/lease.py)."""
    rows = cluster.query("SELECT name, holder FROM controlplane_coordinatorlease")
    return {row["holder"] for row in rows if row["name"].startswith("executor:")}


@needs_pg
@pytest.mark.processes
def test_killing_the_coordinator_running_a_local_run_resumes_it_on_the_other(
    tmp_path: Path, db_template: Path
):
    c = Cluster(tmp_path / "home", db_template, extra_env=FAST_TIMING)
    try:
        flag = tmp_path / "started"
        # Forced local: one of the coordinators' own executors takes it. Long the first time,
        # instant once resumed.
        (c.home / "dags").mkdir(exist_ok=True)
        write_dag(
            c.home / "dags",
            "local-long",
            "worker_selector: local\nsteps:\n  - name: a\n"
            f"    command: sh -c 'test -e {flag} && exit 0; touch {flag}; sleep 60'\n",
        )
        c.start_coordinator("c1")
        c.start_peer_coordinator("c2")
        web = c.start_web()
        ids = {name: f"local:{socket.gethostname()}:{c.procs[name].pid}" for name in ("c1", "c2")}
        wait_for(
            lambda: executor_rows(c) == set(ids.values()), timeout=30, what="both liveness rows"
        )
        (run_id,) = create_runs(web, api_token(c), "local-long", 1)
        wait_for(flag.exists, timeout=30, what="the local run to start")
        holder = c.run_row(run_id)["worker_id"]
        doomed, survivor = ("c1", "c2") if holder == ids["c1"] else ("c2", "c1")
        assert holder == ids[doomed]
        # Make the doomed one look as if it ran on another host, where the survivor cannot
        # check its pid: only its liveness row running out can tell that it died.
        elsewhere = f"local:elsewhere.example:{c.procs[doomed].pid}"
        for table, key in (("dags_attempt", "run_id"), ("dags_dagrun", "id")):
            c.query(
                f"UPDATE {table} SET worker_id = ? WHERE {key} = ? RETURNING 1", elsewhere, run_id
            )
        c.query(
            "INSERT INTO controlplane_coordinatorlease (name, holder, fencing, acquired_at, "
            "expires_at) VALUES (?, ?, 0, now(), now() + make_interval(secs => ?)) RETURNING 1",
            executor_row_name(elsewhere),
            elsewhere,
            EXECUTOR_STALE_SECONDS,
        )
        c.kill(doomed)
        row = wait_for(
            lambda: (r := c.run_row(run_id)) and r["status"] == "succeeded" and r,
            timeout=EXECUTOR_STALE_SECONDS + 10 + 10,  # stale + a lease handover + slack
            what="the run to resume on the surviving coordinator",
            every=0.2,
        )
        assert (row["attempt"], row["worker_id"]) == (2, ids[survivor])
        first = c.query("SELECT end_reason FROM dags_attempt WHERE number = 1")[0]
        assert "stopped renewing its liveness" in first["end_reason"]
        # A clean stop takes the survivor's row away (the dead one's went with its recovery).
        assert c.stop(survivor) == 0
        assert ids[survivor] not in executor_rows(c)
    finally:
        c.close()


def test_the_holder_id_names_the_process():
    # holder_pid above relies on the holder id's shape.
    host, pid, token = new_holder_id().split(":")
    assert int(pid) == os.getpid() and host and token


@pytest.mark.django_db
def test_the_lease_holder_requeues_the_local_runs_of_a_coordinator_that_stopped_renewing():
    """A coordinator on another host died (kill -9, lost host): its liveness row goes stale and
    the lease holder requeues its local runs; a live coordinator's are never touched."""
    spec = parse_dag_file(STEP, source="l.yaml", default_name="l")
    dead, alive = "local:host-a:41", "local:host-b:42"
    runs = {}
    for executor in (dead, alive):
        run = create_run(spec, now=T0, default_mode="local")
        assert start_attempt(run, now=T0, mode="local", worker_id=executor) is not None
        runs[executor] = run.id
    renew_executor(dead, now=T0)
    later = T0 + timedelta(seconds=EXECUTOR_STALE_SECONDS + 1)
    renew_executor(alive, now=later)  # still renewing
    # Not yet stale: nothing moves.
    assert recover_dead_coordinators_local_attempts(now=T0 + timedelta(seconds=1)) == 0
    assert recover_dead_coordinators_local_attempts(now=later) == 1
    requeued = DagRun.objects.get(pk=runs[dead])
    assert (requeued.status, requeued.worker_id) == ("queued", "")
    assert Attempt.objects.get(run_id=runs[dead]).status == "superseded"
    untouched = DagRun.objects.get(pk=runs[alive])
    assert (untouched.status, untouched.worker_id) == ("running", alive)
    assert Attempt.objects.get(run_id=runs[alive]).status == "assigned"
    # Idempotent: the dead one's row is gone, and a second pass changes nothing.
    assert stale_executors(now=later) == set()
    assert recover_dead_coordinators_local_attempts(now=later) == 0
    assert DagRun.objects.get(pk=runs[dead]).status == "queued"
    # A `manage.py start` process keeps no liveness row: left to the same-host recovery.
    start_process = create_run(spec, now=T0, default_mode="local")
    start_attempt(start_process, now=T0, mode="local", worker_id="local:host-a:43")
    much_later = later + timedelta(days=1)
    renew_executor(alive, now=much_later)
    assert recover_dead_coordinators_local_attempts(now=much_later) == 0
    assert DagRun.objects.get(pk=start_process.id).status == "running"


@pytest.mark.django_db
def test_a_clean_stop_retires_the_liveness_row_or_leaves_its_leftovers_to_the_holder():
    spec = parse_dag_file(STEP, source="l.yaml", default_name="l")
    renew_executor("local:h:1", now=T0)
    retire_executor("local:h:1", now=T0)  # no local run left: nothing to recover
    assert not CoordinatorLease.objects.exists()
    run = create_run(spec, now=T0, default_mode="local")
    start_attempt(run, now=T0, mode="local", worker_id="local:h:2")
    renew_executor("local:h:2", now=T0)
    retire_executor("local:h:2", now=T0 + timedelta(seconds=1))  # a run outlived the grace
    assert recover_dead_coordinators_local_attempts(now=T0 + timedelta(seconds=2)) == 1
    assert DagRun.objects.get(pk=run.id).status == "queued"


# --- wake-ups ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_run_queued_anywhere_wakes_every_listening_coordinator(tmp_path: Path):
    if connection.vendor != "postgresql":
        assert wakeups.listen(stop=threading.Event(), on_wake=lambda: None) is None
        return
    stop = threading.Event()
    woken = [threading.Event(), threading.Event()]  # two coordinators' dispatchers
    threads = [wakeups.listen(stop=stop, on_wake=event.set) for event in woken]
    try:
        for event in woken:  # each wakes once on connecting
            assert event.wait(10)
            event.clear()
        with transaction.atomic():
            wakeups.runs_queued()
            wakeups.runs_queued()
            time.sleep(0.5)
            assert not any(event.is_set() for event in woken)  # nothing before the commit
        assert all(event.wait(10) for event in woken)
    finally:
        stop.set()
        for thread in threads:
            assert thread is not None
            thread.join(timeout=5)


@pytest.mark.django_db(transaction=True)
def test_an_undrain_wakes_every_listening_coordinator():
    # Otherwise a coordinator whose worker was undrained elsewhere (API, another web replica)
    # would only see it on its next idle pass.
    if connection.vendor != "postgresql":
        pytest.skip("wake-ups across coordinators need PostgreSQL")
    Worker.objects.create(id="w1", registered_at=T0, draining=True)
    stop, woken = threading.Event(), threading.Event()
    thread = wakeups.listen(stop=stop, on_wake=woken.set)
    try:
        assert woken.wait(10)  # once on connecting
        woken.clear()
        assert set_draining("w1", draining=True)
        time.sleep(0.5)
        assert not woken.is_set()  # draining frees nothing to dispatch
        assert set_draining("w1", draining=False)
        assert woken.wait(10)
    finally:
        stop.set()
        assert thread is not None
        thread.join(timeout=5)


def next_minute(after: datetime) -> datetime:
    return after.replace(second=0, microsecond=0) + timedelta(minutes=1)


def sleep_until(when: datetime) -> None:
    time.sleep(max(0.0, (when - datetime.now(UTC)).total_seconds()))


@needs_pg
@pytest.mark.processes
def test_a_cron_dag_every_minute_fires_exactly_three_times_in_three_minutes_across_takeovers(
    cluster: Cluster,
):
    """The issue's three minutes, spent on both ways a takeover could double or lose a tick.

    Coordinators h and o; the worker is on o and also lists h's port. Tick 1 is fired by h.
    h is killed 15 s later: o takes over inside the scheduler's catch-up window, so it
    retries tick 1 (the claim row must refuse it) and fires tick 2. h comes back on its port
    as a stand-by, and o is killed 5 s before tick 3: that tick falls due while nobody holds
    the lease, so the restarted h must fire it late, once. Each tick's fencing number says
    which term fired it.
    """
    c = cluster
    (c.home / "dags").mkdir(exist_ok=True)
    write_dag(
        c.home / "dags",
        "minutely",
        "schedule: '* * * * *'\nworkerSelector:\n  pool: x\n"
        "steps:\n  - name: a\n    command: 'true'\n",
    )
    # Exactly three minute boundaries: the first after the schedulers start (not one hit
    # while they start up) and the two after it; no wait for a round minute.
    if next_minute(datetime.now(UTC)) - datetime.now(UTC) < timedelta(seconds=15):
        sleep_until(next_minute(datetime.now(UTC)) + timedelta(seconds=0.5))
    first_tick = next_minute(datetime.now(UTC))
    ticks = [first_tick + timedelta(minutes=m) for m in range(3)]
    c.start_coordinator("c1")
    assert c.port is not None
    ports = {"c1": c.port, "c2": c.start_peer_coordinator("c2")}
    # Their schedulers start before they listen: none of them saw a boundary before `ticks`.
    assert datetime.now(UTC) < first_tick, "the coordinators took over 15 s to start"
    lease = wait_for(
        lambda: holder_pid(row := lease_row(c)) and row, timeout=30, what="a lease holder"
    )
    h = next(n for n in ports if c.procs[n].pid == holder_pid(lease))
    o = next(n for n in ports if n != h)
    c.start_worker(
        "w", "pool=x", max_runs=1, coordinators=f"127.0.0.1:{ports[o]},127.0.0.1:{ports[h]}"
    )

    def fired(due: datetime) -> dict:
        tick = wait_for(
            lambda: c.query(
                "SELECT * FROM controlplane_crontick WHERE dag_name = 'minutely' AND due_at = ?",
                due,
            ),
            timeout=max(0.0, (due - datetime.now(UTC)).total_seconds()) + 30,
            what=f"the {due:%H:%M} tick",
            every=0.5,
        )[0]
        c.wait_run(tick["run_id"], timeout=60)
        return dict(tick)

    def taken_by(name: str, fencing: int) -> None:
        wait_for(
            lambda: (
                (row := lease_row(c))
                and holder_pid(row) == c.procs[name].pid
                and row["fencing"] == fencing
            ),
            timeout=10 + 2,  # the issue's 10 s, with scheduling slack
            what=f"{name} to take the lease",
            every=0.2,
        )

    fencing = lease["fencing"]
    assert fired(ticks[0])["fencing"] == fencing
    sleep_until(ticks[0] + timedelta(seconds=15))
    c.kill(h)
    taken_by(o, fencing + 1)
    back = f"{h}-again"
    c.start_peer_coordinator(back, port=ports[h])
    assert fired(ticks[1])["fencing"] == fencing + 1
    sleep_until(ticks[2] - timedelta(seconds=5))
    assert holder_pid(lease_row(c)) == c.procs[o].pid  # the stand-by did not take it
    c.kill(o)
    taken_by(back, fencing + 2)
    assert fired(ticks[2])["fencing"] == fencing + 2

    claims = c.query(
        "SELECT due_at, run_id FROM controlplane_crontick WHERE dag_name = 'minutely'"
        " ORDER BY due_at"
    )
    assert [t["due_at"] for t in claims] == ticks
    runs = c.query("SELECT id, status FROM dags_dagrun WHERE dag_name = 'minutely'")
    assert sorted(r["id"] for r in runs) == sorted(t["run_id"] for t in claims)
    assert all(r["status"] == "succeeded" for r in runs), runs
    attempts = c.query(
        "SELECT a.run_id, a.status FROM dags_attempt a JOIN dags_dagrun r ON r.id = a.run_id"
        " WHERE r.dag_name = 'minutely'"
    )
    assert sorted((a["run_id"], a["status"]) for a in attempts) == sorted(
        (r["id"], "succeeded") for r in runs
    )


# Dispatch after a kill may pause for at most the issue's 10 s. The slack covers what the
# measurement adds, not the product: the kill instant is read in this process after the
# SIGKILL returns, and each start is stamped by the worker when its agent begins the run
# (process start-up of a few hundred ms on a loaded 2-core machine).
DISPATCH_PAUSE_LIMIT = 10 + 2


@needs_pg
@pytest.mark.processes
def test_killing_a_coordinator_mid_runs_loses_and_doubles_none(tmp_path: Path, db_template: Path):
    c = Cluster(tmp_path / "home", db_template, extra_env=FAST_TIMING)
    try:
        (c.home / "dags").mkdir(exist_ok=True)
        marks = tmp_path / "marks"
        # A short step so 200 runs take long enough for the kill to land mid-stream.
        write_dag(
            c.home / "dags",
            "steady",
            "workerSelector:\n  pool: x\nsteps:\n  - name: a\n    command: sh -c"
            f" 'echo start-$DAG_RUN_ID >> {marks}; sleep 0.05; echo end-$DAG_RUN_ID >> {marks}'\n",
        )
        c.start_coordinator("c1")
        port2 = c.start_peer_coordinator("c2")
        both = {"c1": f"127.0.0.1:{c.port}", "c2": f"127.0.0.1:{port2}"}
        # Two workers on each, every one listing both; w1 and w2 are orphaned by the kill.
        order = {"w1": "c1,c2", "w2": "c1,c2", "w3": "c2,c1", "w4": "c2,c1"}
        for worker_id, names in order.items():
            listed = ",".join(both[name] for name in names.split(","))
            c.start_worker(worker_id, "pool=x", max_runs=4, coordinators=listed)
        for worker_id, names in order.items():
            wait_for(
                lambda w=worker_id, n=names: f"connected to coordinator {both[n[:2]]}" in c.log(w),
                timeout=30,
                what=f"{worker_id} to connect to {names[:2]}",
            )
        web, token = c.start_web(), api_token(c)
        # The API keeps creating runs while the coordinator dies, as clients would.
        with ThreadPoolExecutor(max_workers=1) as background:
            creating = background.submit(create_runs, web, token, "steady", ISSUE_RUNS)
            wait_for(
                lambda: len(marked(marks)) >= ISSUE_RUNS // 2,  # two lines a run: a quarter
                timeout=120,
                what="the runs to get going",
                every=0.05,
            )
            c.kill("c1")
            killed_at = datetime.now(UTC)
            done_at_kill = succeeded(c)
            assert done_at_kill < ISSUE_RUNS * 3 // 4, "the kill should land in the middle"
            moved = f"coordinator {both['c1']} stopped answering"
            for orphan in ("w1", "w2"):
                # Within 10 s of the kill (the issue's bound), timed from the kill itself.
                left = 10 - (datetime.now(UTC) - killed_at).total_seconds()
                wait_for(
                    lambda w=orphan: moved in c.log(w) and f"now using {both['c2']}" in c.log(w),
                    timeout=max(left, 0),
                    what=f"orphaned worker {orphan} to move to c2 within 10 s of the kill",
                    every=0.05,
                )
            run_ids = creating.result(timeout=180)
        wait_for(
            lambda: succeeded(c) == ISSUE_RUNS,
            timeout=180,
            what="every run to succeed after a coordinator died",
            every=0.5,
        )
        assert_each_ran_once(c, run_ids, marks)
        # Dispatch never stopped for more than 10 s: the largest gap between consecutive
        # attempt starts from the kill to the last start.
        starts = sorted(
            a["started_at"]
            for a in c.query("SELECT started_at FROM dags_attempt WHERE started_at >= ?", killed_at)
        )
        assert len(starts) >= ISSUE_RUNS - done_at_kill - 16  # at most 16 slots were busy
        times = [killed_at, *starts]
        pause = max((b - a).total_seconds() for a, b in itertools.pairwise(times))
        assert pause <= DISPATCH_PAUSE_LIMIT, pause
        # The orphans kept working through c2.
        after = c.query(
            "SELECT DISTINCT worker_id FROM dags_attempt WHERE started_at > ?", killed_at
        )
        assert {"w1", "w2"} & {a["worker_id"] for a in after}
        assert all(c.procs[w].poll() is None for w in order) and c.procs["c2"].poll() is None
    finally:
        c.close()
