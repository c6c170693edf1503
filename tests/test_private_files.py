"""Files holding secrets are 0600, also when they existed with a looser mode (issue 10)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.procs import MANAGE


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def run_check(home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGU_", "DJANGO_"))}
    env["DAGU_HOME"] = str(home)
    env.pop("DATABASE_URL", None)
    return subprocess.run([*MANAGE, "check"], env=env, capture_output=True, text=True, timeout=120)


def test_the_secret_key_file_is_created_0600_and_tightened_when_loose(tmp_path: Path):
    home = tmp_path / "home"
    assert run_check(home).returncode == 0
    key_file = next(home.rglob("secret_key"))
    key = key_file.read_text()
    assert mode(key_file) == 0o600
    key_file.chmod(0o644)
    result = run_check(home)
    assert result.returncode == 0, result.stderr
    assert mode(key_file) == 0o600
    assert key_file.read_text() == key  # the same key: sessions survive the fix
    assert f"{key_file} was mode 0644; set it to 0600" in result.stderr


def test_the_secret_key_is_never_written_with_a_looser_mode(tmp_path: Path):
    # A umask of 0 would make a plain write_text 0666 until the chmod that follows it.
    home = tmp_path / "home"
    code = (
        "import os; os.umask(0); from controlplane.core.privatefile import write_private_file;"
        f"from pathlib import Path; write_private_file(Path({str(home / 'k')!r}), 'x')"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).parent.parent
    )
    assert mode(home / "k") == 0o600
