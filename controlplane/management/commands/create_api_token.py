"""`manage.py create_api_token USERNAME`: create (or show) a user's REST API token.

The token is printed alone on the last line of stdout, so scripts can take `| tail -n1`.
`--create-user` creates the user first if needed: a staff account with no usable password,
which can use the API with its token but cannot log into the admin until given a password.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from controlplane.cli import ConfigCommand
from controlplane.core.config import Config


class Command(ConfigCommand):
    help = "Create (or show) the API token of a user; the token is the last line of output."
    config_sections = ("paths",)

    def add_command_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("username", help="the user the token belongs to")
        parser.add_argument(
            "--create-user",
            action="store_true",
            help="create the user (staff, no password) if it does not exist",
        )

    def handle_config(self, config: Config, **options: Any) -> None:
        username = options["username"]
        user_model = get_user_model()
        lookup = {user_model.USERNAME_FIELD: username}
        user = user_model.objects.filter(**lookup).first()
        if user is None:
            if not options["create_user"]:
                self.exit_with_error(
                    f'unknown user "{username}" (create it with --create-user, or in the admin)'
                )
            # No password given: create_user stores an unusable one.
            user = user_model.objects.create_user(**lookup, is_staff=True)
            self.stdout.write(f'created staff user "{username}" (no password)')
        token, created = Token.objects.get_or_create(user=user)
        self.stdout.write(f'{"new" if created else "existing"} API token for "{username}":')
        self.stdout.write(token.key)
