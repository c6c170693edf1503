"""The worker's bootstrap token (<data-dir>/worker_token): picked up when a coordinator writes
or replaces it, read again only when it changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controlplane.core.rpc.client import BootstrapToken


def replace_file(path: Path, text: str) -> None:
    # As a coordinator writes it: a new file moved into place.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_the_token_follows_the_file_as_it_appears_changes_and_goes(tmp_path: Path):
    path = tmp_path / "worker_token"
    token = BootstrapToken(path)
    assert token() == ("", "")  # a worker started before its coordinator
    replace_file(path, "dwt_first\n")
    assert token() == ("dwt_first", str(path))
    replace_file(path, "dwt_second\n")  # the coordinator wrote a new one on restart
    assert token() == ("dwt_second", str(path))
    path.write_text("dwt_third")  # rewritten in place
    assert token() == ("dwt_third", str(path))
    path.unlink()
    assert token() == ("", "")


def test_an_unchanged_file_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "worker_token"
    replace_file(path, "dwt_only")
    reads: list[Path] = []
    real = Path.read_text

    def counting(self: Path, *args: object, **kwargs: object) -> str:
        reads.append(self)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", counting)
    token = BootstrapToken(path)
    assert {token() for _ in range(100)} == {("dwt_only", str(path))}
    assert reads == [path]
