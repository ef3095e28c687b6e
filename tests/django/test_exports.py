"""The adapter's public names, pinned; importing the package imports nothing of Django."""

from __future__ import annotations

import importlib
import subprocess
import sys

PUBLIC = {
    "conf": {"DEFAULT_LAYER", "BusSettings", "get_settings"},
    "handler": {
        "BusRequest",
        "StaticFilesConsumer",
        "SyncBus",
        "ViewConsumer",
        "encode_response",
        "read_body",
    },
    "sessions": {
        "channel_and_http_session",
        "channel_session",
        "enforce_ordering",
        "http_session",
        "session_for_reply_channel",
    },
    "auth": {
        "channel_session_user",
        "channel_session_user_from_http",
        "get_user",
        "http_session_user",
        "transfer_user",
    },
    "binding": {"Binding", "bind_model"},
    "routing": {"DjangoRouter", "django_consumer", "load_routing", "project_router"},
    "testing": {"BusResponse", "BusTestCase", "ConsumerClient", "HttpClient"},
    "checks": {"check_settings"},
}


def test_public_names() -> None:
    for name, expected in PUBLIC.items():
        module = importlib.import_module(f"csp_bus.adapters.django.{name}")
        assert set(module.__all__) == expected, name
        for attribute in expected:
            assert hasattr(module, attribute), (name, attribute)


def test_importing_the_package_imports_no_django() -> None:
    code = (
        "import sys, csp_bus.adapters.django; "
        "print(sorted(m for m in sys.modules if m == 'django' or m.startswith('django.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
