"""Files that hold secrets (the Django secret key, the bootstrap worker token): owner-only.

Written 0600 from the first byte (created with that mode, then renamed into place), and an
existing file with a looser mode (an older release, a restored backup, a careless `cp`) is
tightened when it is read, with one log line saying so.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

PRIVATE_MODE = 0o600


def read_private_file(path: Path) -> str | None:
    """The file's text (stripped), its mode made 0600 first; None when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd) as f:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & ~PRIVATE_MODE:
            os.fchmod(fd, PRIVATE_MODE)
            logger.warning("%s was mode %04o; set it to 0600 (it holds a secret)", path, mode)
        return f.read().strip()


def write_private_file(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically; the file is never readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temp, path)
