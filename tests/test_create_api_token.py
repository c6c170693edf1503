"""`manage.py create_api_token USERNAME [--role ROLE]`: the token alone on the last line."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token

from controlplane.roles import role_of

pytestmark = pytest.mark.django_db


def run_command(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("create_api_token", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def last_line(text: str) -> str:
    return text.rstrip("\n").splitlines()[-1]


def test_prints_a_new_token_on_the_last_line():
    user = get_user_model().objects.create_user("alice")
    out, _ = run_command("alice")
    assert last_line(out) == Token.objects.get(user=user).key
    assert len(last_line(out)) == 40


def test_a_second_call_shows_the_same_token():
    get_user_model().objects.create_user("alice")
    first, _ = run_command("alice")
    second, _ = run_command("alice")
    assert last_line(first) == last_line(second)
    assert Token.objects.count() == 1
    assert "existing" in second


def test_unknown_user_is_created_without_password_or_role():
    out, _ = run_command("robot")
    user = get_user_model().objects.get(username="robot")
    assert not user.has_usable_password()
    assert not user.is_staff and not user.is_superuser
    assert role_of(user) is None
    assert "no role" in out
    assert last_line(out) == Token.objects.get(user=user).key


def test_role_sets_exactly_that_role():
    run_command("robot", "--role", "manager")
    out, _ = run_command("robot", "--role", "viewer")
    user = get_user_model().objects.get(username="robot")
    assert role_of(user) == "viewer"
    assert list(user.groups.values_list("name", flat=True)) == ["viewer"]
    assert last_line(out) == Token.objects.get(user=user).key


def test_unknown_role_is_refused_and_no_token():
    with pytest.raises(CommandError, match="invalid choice: 'root'"):
        run_command("robot", "--role", "root")
    assert not Token.objects.exists()


def test_as_a_real_command(tmp_path, db_template):
    """Through manage.py: exit statuses and stdout as a script sees them."""
    import os
    import shutil
    import subprocess

    from tests.procs import DB_NAME, MANAGE

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(db_template, home / DB_NAME)
    env = {**os.environ, "DAGU_HOME": str(home)}
    env.pop("DATABASE_URL", None)

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*MANAGE, "create_api_token", *args], env=env, text=True,
                              capture_output=True, timeout=60)  # fmt: skip

    created = manage("ci-bot", "--role", "operator")
    assert created.returncode == 0, created.stderr
    again = manage("ci-bot")
    assert again.returncode == 0
    assert last_line(again.stdout) == last_line(created.stdout)
    assert len(last_line(again.stdout)) == 40
