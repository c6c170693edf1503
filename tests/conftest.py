"""Shared fixtures. The Makefile points DAGU_HOME at a temporary dir for the whole run, so
tests never touch an operator's data dir; end-to-end clusters get their own dirs below."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Cluster, migrated_template


@pytest.fixture(scope="session")
def db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return migrated_template(tmp_path_factory.mktemp("template"))


@pytest.fixture
def cluster(tmp_path: Path, db_template: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "home", db_template)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def fast_cluster(tmp_path: Path, db_template: Path) -> Iterator[Cluster]:
    """A cluster with health thresholds shrunk for fault tests."""
    from tests.procs import FAST_TIMING

    c = Cluster(tmp_path / "home", db_template, extra_env=FAST_TIMING)
    try:
        yield c
    finally:
        c.close()
