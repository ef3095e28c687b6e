"""System checks, the real worker running Django views, and the management commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from csp_bus.adapters.django.checks import check_settings
from csp_bus.adapters.django.conf import BusSettings, get_settings
from csp_bus.adapters.django.routing import project_router
from django.core.management import call_command
from django.test import override_settings

from csp_bus.layers import open_layer
from csp_bus.messages import new_channel_name
from csp_bus.sync import connect
from csp_bus.worker import Worker

HERE = Path(__file__).parent


def ids(messages) -> list[str]:
    return [m.id for m in messages]


def test_settings_defaults() -> None:
    assert BusSettings.from_mapping(None, environ={}) == BusSettings(layer="memory://")
    assert BusSettings.from_mapping({}, environ={"CSP_BUS_LAYER": "redis://x"}).layer == "redis://x"
    with pytest.raises(ValueError, match="unknown key"):
        BusSettings.from_mapping({"LAYERS": "memory://"})
    with pytest.raises(ValueError, match="WORKER_THREADS"):
        BusSettings.from_mapping({"WORKER_THREADS": 0})


def test_checks_pass_for_the_test_project() -> None:
    assert check_settings() == []


def test_check_reports_bad_layer_url() -> None:
    with override_settings(CSP_BUS={"LAYER": "rabbit://nowhere"}):
        assert ids(check_settings()) == ["csp_bus.E002"]
    with override_settings(CSP_BUS={"LAYER": "memory://?capacity=zero"}):
        assert ids(check_settings()) == ["csp_bus.E002"]


def test_check_reports_bad_routing() -> None:
    with override_settings(CSP_BUS={"ROUTING": "no_such_module.routes"}):
        assert ids(check_settings()) == ["csp_bus.E003"]
    with override_settings(CSP_BUS={"ROUTIN": "x"}):
        assert ids(check_settings()) == ["csp_bus.E001"]


def test_check_warns_about_app_order_and_cookie_sessions() -> None:
    from django.conf import settings

    apps = [a for a in settings.INSTALLED_APPS if a != "csp_bus.adapters.django"]
    with override_settings(INSTALLED_APPS=[*apps, "csp_bus.adapters.django"]):
        assert "csp_bus.W001" in ids(check_settings())
    with override_settings(SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies"):
        assert ids(check_settings()) == ["csp_bus.W002"]


def http_request(path: str, query: bytes = b"") -> dict[str, object]:
    return {
        "reply_channel": new_channel_name("http.response.t!"),
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "query_string": query,
        "root_path": "",
        "headers": [[b"host", b"testserver"]],
        "body": b"",
        "client": ["127.0.0.1", 1234],
        "server": ["127.0.0.1", 80],
    }


async def test_the_worker_serves_django_views() -> None:
    router = project_router(get_settings())
    assert "http.request" in router.channels
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        worker = await nursery.start(Worker(layer, router, threads=2).run)
        requests = [http_request("/"), http_request("/nope/"), http_request("/stream/")]
        for request in requests:
            await layer.send("http.request", request)
        answers: dict[str, list[dict]] = {}
        with trio.fail_after(10):
            while len(answers) < 3 or any(m[-1]["more_content"] for m in answers.values()):
                channel, message = await layer.receive("http.response.t!")
                answers.setdefault(channel, []).append(message)
        worker.stop()
    replies = [answers[r["reply_channel"]] for r in requests]
    assert replies[0][0]["status"] == 200
    assert replies[0][0]["content"] == b"Hello, world!"
    assert replies[1][0]["status"] == 404
    assert b"".join(m["content"] for m in replies[2]) == b"".join(
        f"line {i}\n".encode() for i in range(5)
    )


def test_send_event(redis_url: str) -> None:
    with connect(redis_url) as bus:
        call_command(
            "send_event", "cron.tick", '{"n": 1, "b": {"$bytes": "AAE="}}', layer=redis_url
        )
        assert bus.receive("cron.tick", timeout=5) == ("cron.tick", {"n": 1, "b": b"\x00\x01"})


def test_send_event_rejects_bad_json(redis_url: str) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="JSON object"):
        call_command("send_event", "cron.tick", "[1, 2]", layer=redis_url)


def manage(*args: str) -> list[str]:
    return [sys.executable, "-m", "django", *args, "--settings=busproj_settings"]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


def test_runworker_over_redis(redis_url: str) -> None:
    process = subprocess.Popen(
        manage("runworker", "--layer", redis_url, "--threads", "2"),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = process.stdout.readline()
        assert "runworker: 2 threads" in banner, process.stderr.read()
        with connect(redis_url) as bus:
            request = http_request("/echo/", b"x=1")
            bus.send("http.request", request)
            got = bus.receive("http.response.t!", timeout=20)
        assert got is not None
        assert got[1]["status"] == 200, got[1]["content"][:3000]
        assert json.loads(got[1]["content"])["GET"] == {"x": ["1"]}
    finally:
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(20) == 0
        finally:
            process.kill()
            process.communicate()
