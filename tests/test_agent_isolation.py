"""The worker agent talks to the control plane over gRPC only: it imports no model module,
so a worker host needs no database and cannot reach around the coordinator."""

from __future__ import annotations

import subprocess
import sys

from tests.procs import ROOT

PROBE = """
import sys
import controlplane.core.agent  # noqa: F401
loaded = sorted(m for m in sys.modules if m.endswith(".models") or m.startswith("django.db.models"))
print(",".join(loaded))
"""


def test_the_worker_agent_imports_no_model_module() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"the agent pulled in: {result.stdout.strip()}"
