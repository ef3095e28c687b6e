"""``csp-bus serve`` as a real process: embedded workers, signals, --workers, --fd."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

APP = textwrap.dedent(
    """
    import os
    from csp_bus.routing import route

    async def hello(message):
        await message.reply_channel.asend(
            {"status": 200, "content": f"hello from {os.getpid()}".encode()}
        )

    app = [route("http.request", hello)]
    """
)


def serve(tmp_path: Path, *args: str, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[str]:
    (tmp_path / "bench_app_mod.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("CSP_BUS_LAYER", None)
    return subprocess.Popen(
        [sys.executable, "-m", "csp_bus", "serve", *args],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=pass_fds,
    )


def wait_ready(process: subprocess.Popen[str], count: int = 1) -> list[str]:
    """The URLs from the first ``count`` 'csp-bus serve [pid]: ... on URL' lines."""
    assert process.stderr is not None
    urls: list[str] = []
    deadline = time.monotonic() + 20
    while len(urls) < count:
        assert time.monotonic() < deadline, "the server did not start"
        line = process.stderr.readline()
        assert line, f"the server exited: {process.wait()}"
        found = re.search(r"csp-bus serve \[\d+\]: .* on (\S+)", line)
        if found:
            urls.append(found.group(1).rstrip(","))
    return urls


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stderr:
            process.stderr.close()


def test_workers_refused_on_the_memory_layer(tmp_path: Path, processes) -> None:
    process = serve(tmp_path, "--workers", "2", "--bind", "127.0.0.1:0")
    processes.append(process)
    assert process.wait(20) == 2
    assert process.stderr is not None
    assert "memory:// layer lives inside one process" in process.stderr.read()


def test_embedded_app_and_graceful_sigterm(tmp_path: Path, processes) -> None:
    process = serve(
        tmp_path, "--app", "bench_app_mod:app", "--bind", "127.0.0.1:0", "--no-access-log"
    )
    processes.append(process)
    (url,) = wait_ready(process)
    with httpx.Client() as client:
        response = client.get(url + "/")
    assert response.text == f"hello from {process.pid}"
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0


def test_welcome_page_and_inherited_fd(tmp_path: Path, processes) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    with sock:
        process = serve(tmp_path, "--fd", str(sock.fileno()), pass_fds=(sock.fileno(),))
        processes.append(process)
        wait_ready(process)
    with httpx.Client() as client:
        response = client.get(f"http://127.0.0.1:{port}/")
    assert response.status_code == 200
    assert "--app" in response.text
    process.send_signal(signal.SIGINT)
    assert process.wait(20) == 0


@pytest.mark.redis
def test_workers_share_the_socket_on_redis(tmp_path: Path, processes, redis_url: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = serve(
        tmp_path,
        "--workers",
        "2",
        "--layer",
        redis_url,
        "--app",
        "bench_app_mod:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--no-access-log",
    )
    processes.append(process)
    wait_ready(process, count=2)
    with httpx.Client() as client:
        for _ in range(10):
            response = client.get(f"http://127.0.0.1:{port}/", headers={"connection": "close"})
            assert response.text.startswith("hello from ")
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0


def test_reload_restarts_on_a_change(tmp_path: Path, processes) -> None:
    process = serve(
        tmp_path, "--reload", "--app", "bench_app_mod:app", "--bind", "127.0.0.1:0",
        "--graceful-timeout", "1",
    )  # fmt: skip
    processes.append(process)
    wait_ready(process)
    time.sleep(1.2)  # mtimes have a resolution; make the change visibly later
    (tmp_path / "bench_app_mod.py").write_text(APP.replace("hello from", "hi from"))
    (second,) = wait_ready(process)
    with httpx.Client() as client:
        assert client.get(second + "/").text.startswith("hi from ")
    process.send_signal(signal.SIGINT)
    assert process.wait(20) == 0
