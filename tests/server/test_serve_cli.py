"""``csp-bus serve`` as a real process: embedded workers, signals, --workers, --fd."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

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


def _stderr_lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    """A queue of the process's stderr lines ("" at the end), fed by a reader thread, so
    that waiting for a line can time out instead of blocking in readline() for ever."""
    lines = getattr(process, "_stderr_lines", None)
    if lines is None:
        lines = queue.Queue()
        stream = process.stderr
        assert stream is not None

        def pump() -> None:
            try:
                for line in stream:
                    lines.put(line)
            except (ValueError, OSError):  # the fixture closed the stream at teardown
                pass
            lines.put("")

        threading.Thread(target=pump, daemon=True).start()
        process._stderr_lines = lines  # type: ignore[attr-defined]
    return lines


def wait_ready(process: subprocess.Popen[str], count: int = 1) -> list[str]:
    """The URLs from the first ``count`` 'csp-bus serve [pid]: ... on URL' lines."""
    lines = _stderr_lines(process)
    urls: list[str] = []
    deadline = time.monotonic() + 20
    while len(urls) < count:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"the server did not start within 20 s (saw {urls})") from None
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


WS_APP = """
from csp_bus.routing import route


async def accept(message):
    await message.reply_channel.asend({"accept": True})


app = [route("websocket.connect", accept)]
"""


def close_code(client: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed) as caught:
        client.recv(timeout=15)
    assert caught.value.rcvd is not None, "the server sent no close frame"
    return caught.value.rcvd.code


def test_reload_closes_websockets_with_service_restart(tmp_path: Path, processes) -> None:
    """A --reload restart (SIGHUP to the server) closes with 1012, a stop with 1001."""
    (tmp_path / "ws_reload_app.py").write_text(WS_APP)
    process = serve(
        tmp_path, "--reload", "--adapter", "http", "--adapter", "websocket",
        "--app", "ws_reload_app:app", "--bind", "127.0.0.1:0", "--graceful-timeout", "2",
        "--no-access-log",
    )  # fmt: skip
    processes.append(process)
    (url,) = wait_ready(process)
    with connect("ws" + url.removeprefix("http") + "/") as client:
        time.sleep(1.2)  # mtimes have a resolution; make the change visibly later
        (tmp_path / "ws_reload_app.py").write_text(WS_APP + "\n# changed\n")
        assert close_code(client) == 1012
    (second,) = wait_ready(process)  # the restarted server serves again
    with connect("ws" + second.removeprefix("http") + "/") as client:
        process.send_signal(signal.SIGTERM)
        assert close_code(client) == 1001  # a stop is still "going away"
    assert process.wait(20) == 0
