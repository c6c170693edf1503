"""Two coordinators on PostgreSQL: how fast a run queued outside any coordinator is claimed
for a worker of the second one (LISTEN/NOTIFY wake-ups), and how long the housekeeping lease
takes to change hands after `kill -9` of its holder (docs/benchmarks.md, "Several
coordinators").

    E2E_DATABASE_URL=postgres://postgres@127.0.0.1:5432/SCRATCH \
        .venv/bin/python bench/coordinators.py

It creates (and drops) one database on that server, like the PostgreSQL test lane.
"""

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if not os.environ.get("E2E_DATABASE_URL"):
    sys.exit(
        "error: set E2E_DATABASE_URL to a PostgreSQL server URL (several coordinators need it)"
    )

from tests.procs import Cluster, wait_for, write_dag

RUNS = 10


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-coordinators-"))
    c = Cluster(root / "home", root / "unused-sqlite-template")
    try:
        dags = c.home / "dags"
        dags.mkdir()
        dag = write_dag(
            dags, "w", "workerSelector:\n  pool: x\nsteps:\n  - name: a\n    command: 'true'\n"
        )
        c.start_coordinator("c1")
        port2 = c.start_peer_coordinator("c2")
        c.start_worker("b1", "pool=x", port=port2)

        def lease():
            return c.query("SELECT * FROM controlplane_coordinatorlease")[0]

        wait_for(lambda: lease()["holder"], timeout=30, what="a lease holder")
        latencies = []
        for _ in range(RUNS):
            run_id = c.start_run(dag)  # `manage.py start`: no coordinator in that process
            row = c.wait_run(run_id, timeout=60)
            [attempt] = c.query("SELECT created_at FROM dags_attempt WHERE run_id = ?", run_id)
            latencies.append((attempt["created_at"] - row["queued_at"]).total_seconds())
        print("queued -> claimed for c2's worker, s:", sorted(round(x, 3) for x in latencies))
        before = lease()["fencing"]
        holder = "c1" if lease()["holder"].split(":")[1] == str(c.procs["c1"].pid) else "c2"
        started = time.monotonic()
        c.kill(holder)
        wait_for(lambda: lease()["fencing"] > before, timeout=30, what="a takeover", every=0.05)
        print(f"lease taken over {time.monotonic() - started:.1f} s after kill -9 of {holder}")
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
