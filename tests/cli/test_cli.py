"""The csp-bus command line, run as a real subprocess where it matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from csp_bus.cli import from_json, main, to_json

CSP_BUS = [sys.executable, "-m", "csp_bus"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CSP_BUS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("csp-bus")
    assert script.exists()
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("csp-bus ")


@pytest.mark.parametrize("command", ["send", "receive", "stats"])
def test_help_is_complete(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0
    assert "--layer" in result.stdout and "--debug" in result.stdout


def test_memory_layer_is_refused_with_a_pointer_to_redis() -> None:
    result = run("send", "events", '{"a": 1}', env={"CSP_BUS_LAYER": ""})
    assert result.returncode == 2
    assert "redis://" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_json_is_a_usage_error() -> None:
    result = run("send", "events", "{nope", "--layer", "redis://127.0.0.1:1/0")
    assert result.returncode == 2
    assert "not valid JSON" in result.stderr
    result = run("send", "events", "[1]", "--layer", "redis://127.0.0.1:1/0")
    assert result.returncode == 2
    assert "JSON object" in result.stderr


def test_unknown_layer_scheme_lists_accepted_ones() -> None:
    result = run("stats", "--layer", "nats://x")
    assert result.returncode == 2
    assert "accepted schemes" in result.stderr and "memory://" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback() -> None:
    result = run("stats", "--layer", "nats://x", "--debug")
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_usage_errors_exit_2() -> None:
    assert run().returncode == 2
    assert run("send").returncode == 2
    assert run("nosuchcommand").returncode == 2


def test_bytes_convention_round_trips() -> None:
    message = from_json('{"blob": {"$bytes": "AP8="}, "list": [{"$bytes": ""}], "n": 1}')
    assert message == {"blob": b"\x00\xff", "list": [b""], "n": 1}
    assert json.loads(to_json(message)) == {
        "blob": {"$bytes": "AP8="},
        "list": [{"$bytes": ""}],
        "n": 1,
    }


def test_main_returns_exit_codes_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", "x", '{"$bytes": 1}', "--layer", "memory://"]) == 2
    assert "redis://" in capsys.readouterr().err


def _redis_layer_available() -> bool:
    try:
        import csp_bus.layers.redis as module
    except ImportError:
        return False
    return hasattr(module, "RedisLayer")


needs_redis_layer = pytest.mark.skipif(
    not _redis_layer_available(), reason="the redis:// layer (csp_bus.layers.redis) is not built"
)


@needs_redis_layer
def test_send_then_receive_across_processes(redis_url: str) -> None:
    sent = run(
        "send",
        "cron.events",
        '{"job": "nightly", "blob": {"$bytes": "AQI="}}',
        "--layer",
        redis_url,
    )
    assert sent.returncode == 0, sent.stderr
    got = run("receive", "cron.events", "--count", "1", "--timeout", "5", "--layer", redis_url)
    assert got.returncode == 0, got.stderr
    line = json.loads(got.stdout)
    assert line == {
        "channel": "cron.events",
        "message": {"job": "nightly", "blob": {"$bytes": "AQI="}},
    }


@needs_redis_layer
def test_receive_timeout_exits_1(redis_url: str) -> None:
    got = run("receive", "empty.channel", "--count", "1", "--timeout", "0.2", "--layer", redis_url)
    assert got.returncode == 1
    assert "timed out" in got.stderr


@needs_redis_layer
def test_group_send_and_stats(redis_url: str) -> None:
    from csp_bus import sync

    with sync.connect(redis_url) as bus:
        bus.group_add("watchers", "watcher.one")
    assert run("send", "watchers", '{"n": 1}', "--group", "--layer", redis_url).returncode == 0
    stats = run("stats", "--layer", redis_url)
    assert stats.returncode == 0, stats.stderr
    figures = json.loads(stats.stdout)
    assert figures["groups"]["watchers"] == 1
    with sync.connect(redis_url) as bus:
        assert bus.receive("watcher.one", timeout=5) == ("watcher.one", {"n": 1})
        bus.flush()
