"""`manage.py create_api_token USERNAME [--role ROLE]`: create (or show) a user's API token.

The token is printed alone on the last line of stdout, so scripts can take `| tail -n1`.
A missing user is created with no usable password (it uses the API with its token and cannot
log in until given a password); `--role` puts the user in that role (viewer, operator,
manager, admin). A user with no role gets 403 from every endpoint.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from controlplane.cli import ConfigCommand
from controlplane.core.config import Config
from controlplane.roles import ROLES, role_of, set_role


class Command(ConfigCommand):
    help = "Create (or show) the API token of a user; the token is the last line of output."
    config_sections = ("paths",)

    def add_command_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("username", help="the user the token belongs to (created if missing)")
        parser.add_argument("--role", choices=ROLES, help="give the user this role")
        # Kept so older scripts still work: a missing user is always created now.
        parser.add_argument("--create-user", action="store_true", help=argparse.SUPPRESS)

    def handle_config(self, config: Config, **options: Any) -> None:
        username = options["username"]
        user_model = get_user_model()
        lookup = {user_model.USERNAME_FIELD: username}
        user = user_model.objects.filter(**lookup).first()
        if user is None:
            # No password given: create_user stores an unusable one.
            user = user_model.objects.create_user(**lookup)
            self.stdout.write(f'created user "{username}" (no password)')
        if options["role"]:
            set_role(user, options["role"])
        role = role_of(user)
        if role is None:
            self.stdout.write(f'user "{username}" has no role: every request gets 403 (--role)')
        else:
            self.stdout.write(f'user "{username}" has the {role} role')
        token, created = Token.objects.get_or_create(user=user)
        self.stdout.write(f'{"new" if created else "existing"} API token for "{username}":')
        self.stdout.write(token.key)
