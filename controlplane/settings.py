"""Django settings: SQLite (WAL) in the data dir by default, PostgreSQL via DATABASE_URL."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url

from controlplane.core.config import resolve
from controlplane.core.privatefile import read_private_file, write_private_file

BASE_DIR = Path(__file__).resolve().parent.parent

# Resolved at import (defaults < config.yaml < env; manage.py has already exported
# --config/--data-dir), which is all the database and paths below need. A command that takes
# config flags installs its full resolution in place of this one for the whole process
# (controlplane.cli.process_config), so read `settings.DAGU` when needed, never copy it at import.
DAGU = resolve()
DATA_DIR = DAGU.paths.data_dir


def _secret_key() -> str:
    """A stable per-installation key kept in the data dir, unless the environment sets one."""
    if key := os.environ.get("DJANGO_SECRET_KEY"):
        return key
    path = DATA_DIR / "secret_key"
    if key := read_private_file(path):
        return key
    key = secrets.token_urlsafe(50)
    write_private_file(path, key)
    return key


SECRET_KEY = _secret_key()
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "*").split(",") if h]
CSRF_TRUSTED_ORIGINS = [
    o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django_grpc_framework",
    "controlplane",
    "workers",
    "dags",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "controlplane.middleware.ApiBodyLimit",
    "controlplane.middleware.ApiNulRefusal",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
WSGI_APPLICATION = "controlplane.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


# SQLite: pages in the write-ahead log before a commit copies them into the database file.
WAL_AUTOCHECKPOINT_PAGES = 8000


def _database() -> dict[str, object]:
    url = DAGU.database_url or os.environ.get("DATABASE_URL", "")
    if url:
        db: dict[str, object] = dict(dj_database_url.parse(url, conn_max_age=600))
        db["CONN_HEALTH_CHECKS"] = True
        return db
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    return {
        "ENGINE": "controlplane.sqlite",  # django.db.backends.sqlite3 + a writer queue
        "NAME": DATA_DIR / "controlplane.sqlite3",
        # Threads keep their connection; WAL lets the web UI read while the coordinator writes.
        "CONN_MAX_AGE": 600,
        "OPTIONS": {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": (
                "PRAGMA journal_mode=WAL;"
                "PRAGMA synchronous=NORMAL;"
                # The coordinator copies the log into the database every quarter second
                # (controlplane.sqlite.base.checkpoint); this is the backstop for when no
                # coordinator runs. At the default, 1,000 pages, the commit that crossed it
                # did the copy: 1% of run creations took 6-44 ms (docs/benchmarks.md).
                f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES};"
                "PRAGMA busy_timeout=30000;"
                "PRAGMA foreign_keys=ON;"
            ),
        },
    }


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
# whitenoise warns about a missing STATIC_ROOT even though it serves from the app finders.
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# start_all serves static files from the installed apps directly, no collectstatic step.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

LOGIN_URL = "/admin/login/"
# The admin role holds every model permission (controlplane.roles).
AUTHENTICATION_BACKENDS = ["controlplane.roles.AdminBackend"]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "controlplane.api_auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["controlplane.roles.ViewerRequired"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Control plane API",
    "VERSION": "2.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "controlplane.api_links.add_links",
        "controlplane.api_links.add_denials",
    ],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
