from __future__ import annotations

from django.apps import AppConfig


class DagsConfig(AppConfig):
    name = "dags"
    verbose_name = "DAG runs"
