"""Settings of the tests' Django project (``DJANGO_SETTINGS_MODULE=busproj_settings``).

``CSP_BUS_TEST_STATE`` names the folder holding the SQLite database, so that servers and
workers started as subprocesses share the test process's database.
"""

import os
import tempfile
from pathlib import Path

STATE = Path(os.environ.setdefault("CSP_BUS_TEST_STATE", tempfile.mkdtemp(prefix="csp-bus-dj-")))

DEBUG = False
SECRET_KEY = "tests-only-" + "x" * 40
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "busproj"
INSTALLED_APPS = [
    "csp_bus.adapters.django",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(STATE / "db.sqlite3")}}
USE_TZ = True
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
CSP_BUS = {"LAYER": "memory://", "ROUTING": "busproj.routes"}
