"""The real ``csp-bus worker`` and ``csp-bus delay`` commands, run as subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from csp_bus.sync import connect

APP = textwrap.dedent(
    """
    import time
    from csp_bus.consumers import Channel
    from csp_bus.routing import route

    def slow(message):
        Channel("cli.started").send({"n": message["n"]})
        time.sleep(0.5)
        message.reply_channel.send({"done": message["n"]})

    def broken(message):
        raise RuntimeError("contained")

    routes = [route("cli.jobs", slow), route("cli.broken", broken)]
    """
)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "cliapp.py").write_text(APP)
    (tmp_path / "badapp.py").write_text(
        "from csp_bus.routing import route\n"
        "routes = [route('ok', print), route('x', print, path='(')]\n"
    )
    return tmp_path


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("CSP_BUS_LAYER", None)
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "csp_bus", *args], cwd=cwd, stderr=sink, stdout=sink, env=env
        )


def wait_for(log: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{text!r} never appeared; output:\n{log.read_text()}")
        time.sleep(0.05)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_worker_starts_and_exits_0_on_sigterm(
    app_dir: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    log = app_dir / "worker.log"
    worker = start(["worker", "cliapp:routes", "--layer", "memory://"], app_dir, log)
    processes.append(worker)
    wait_for(log, "worker listening on cli.broken, cli.jobs", worker)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert "stopped" in log.read_text()


def test_worker_rejects_bad_routes_with_their_position(app_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "csp_bus", "worker", "badapp", "--layer", "memory://"],
        cwd=app_dir,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "routes[1]" in result.stderr and "not a valid regex" in result.stderr
    assert "Traceback" not in result.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "csp_bus", "worker", "no_such_app_module"],
        cwd=app_dir,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 2 and "cannot load APP" in missing.stderr
    (app_dir / "crashing.py").write_text("raise KeyError('at import')\n")
    crashing = subprocess.run(
        [sys.executable, "-m", "csp_bus", "worker", "crashing"],
        cwd=app_dir,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert crashing.returncode == 2
    assert "KeyError: 'at import'" in crashing.stderr and "Traceback" not in crashing.stderr


@pytest.mark.redis
def test_worker_on_redis_finishes_in_flight_consumer_on_sigterm(
    app_dir: Path, redis_url: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    log = app_dir / "worker.log"
    with connect(redis_url) as bus:
        bus.flush()
        worker = start(["worker", "cliapp", "--layer", redis_url, "--threads", "2"], app_dir, log)
        processes.append(worker)
        wait_for(log, "worker listening", worker)
        reply = bus.new_channel("cli.reply?")
        bus.send("cli.broken", {})
        bus.send("cli.jobs", {"n": 1, "reply_channel": reply})
        assert bus.receive("cli.started", timeout=20) == ("cli.started", {"n": 1})
        worker.send_signal(signal.SIGTERM)  # while the consumer sleeps
        assert worker.wait(20) == 0
        # The in-flight consumer finished and answered before the process exited.
        assert bus.receive(reply, timeout=1) == (reply, {"done": 1})
        output = log.read_text()
        assert "consumer failed on channel 'cli.broken'" in output
        assert "RuntimeError: contained" in output
        bus.flush()


@pytest.mark.redis
def test_delay_command_on_redis(
    app_dir: Path, redis_url: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    log = app_dir / "delay.log"
    with connect(redis_url) as bus:
        bus.flush()
        service = start(["delay", "--layer", redis_url], app_dir, log)
        processes.append(service)
        wait_for(log, "delay service: draining", service)
        sent = time.monotonic()
        bus.send("asgi.delay", {"channel": "cli.later", "content": {"x": 1}, "delay": 300})
        assert bus.receive("cli.later", timeout=10) == ("cli.later", {"x": 1})
        assert time.monotonic() - sent >= 0.3
        service.send_signal(signal.SIGINT)
        assert service.wait(20) == 0
        bus.flush()
