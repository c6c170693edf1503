#!/usr/bin/env python
"""Django's command-line utility for the control plane."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    # --config and --data-dir decide where the database lives, so they must be known
    # before settings load; every other flag is resolved by the command itself.
    from controlplane.config import ConfigError, export_early_flags

    try:
        export_early_flags(sys.argv[1:], os.environ)
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
