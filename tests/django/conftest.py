"""Configure one real Django project (busproj_settings.py, busproj.py) for the whole area."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
os.environ["DJANGO_SETTINGS_MODULE"] = "busproj_settings"

import django  # noqa: E402

django.setup()


@pytest.fixture(scope="session", autouse=True)
def database() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
