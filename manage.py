#!/usr/bin/env python
"""Django's command-line utility for the control plane (the same as the `dagu` command)."""

from __future__ import annotations

from controlplane.console import main

if __name__ == "__main__":
    main()
