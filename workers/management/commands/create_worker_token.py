"""`manage.py create_worker_token NAME [--labels k=v,k2=*] [--worker-id PATTERN]`.

Issues a worker credential; the token is printed alone on the last line of stdout (so
scripts can take `| tail -n1`) and is never shown again: only its hash is stored.
"""

from __future__ import annotations

import argparse
from typing import Any

from controlplane.cli import ConfigCommand
from controlplane.core.clock import utcnow
from controlplane.core.config import Config
from controlplane.core.labels import LabelError, format_labels
from workers.credentials import CredentialError, issue_credential, parse_allowed_labels


class Command(ConfigCommand):
    help = "Issue a worker credential; the token is the last line of output."
    config_sections = ("paths",)

    def add_command_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", help="the credential's name, e.g. eu-pool")
        parser.add_argument(
            "--labels",
            default="",
            help="labels its workers may claim: k=v exactly, k=* any value (default: any)",
        )
        parser.add_argument(
            "--worker-id",
            default="",
            metavar="PATTERN",
            help="worker ids it may use, an fnmatch pattern such as eu-* (default: any)",
        )

    def handle_config(self, config: Config, **options: Any) -> None:
        try:
            labels = parse_allowed_labels(options["labels"])
            token = issue_credential(
                options["name"],
                labels=labels,
                worker_id_pattern=options["worker_id"],
                now=utcnow(),
            )
        except LabelError as exc:
            self.exit_with_error(f"--labels: {exc}")
        except CredentialError as exc:
            self.exit_with_error(str(exc))
        self.stdout.write(
            f'new worker credential "{options["name"]}" (labels: '
            f"{format_labels(labels) or 'any'}; worker ids: {options['worker_id'] or 'any'}):"
        )
        self.stdout.write(token)
