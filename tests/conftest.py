"""Shared test setup: every test gets its own data dir, never the operator's."""

from __future__ import annotations
