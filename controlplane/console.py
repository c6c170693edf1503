"""The `dagu` (and `boltbase`) console command, and manage.py's body.

`dagu COMMAND ...` is `manage.py COMMAND ...` with Dagu's spellings accepted: hyphenated
command names (`start-all`, `create-api-token`) map onto the management commands
(`start_all`, `create_api_token`). Flags need no mapping: every seed spelling
(`--worker.labels`, `--worker-labels`, `--peer.cert-file`, ...) is declared in controlplane.cli.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from django.core.management import execute_from_command_line

from controlplane.core.config import ConfigError, export_early_flags


def command_argv(argv: Sequence[str]) -> list[str]:
    """argv with the subcommand in Django's spelling; options and their values untouched."""
    args = list(argv)
    if len(args) > 1 and not args[1].startswith("-"):
        args[1] = args[1].replace("-", "_")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = command_argv(sys.argv if argv is None else argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    # --config and --data-dir decide where the database lives, so they must be known
    # before settings load; every other flag is resolved by the command itself.
    try:
        export_early_flags(args[1:], os.environ)
        execute_from_command_line(args)
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
