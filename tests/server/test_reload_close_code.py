"""``csp-bus serve --reload``: a restart closes WebSocket clients with 1012, a stop with 1001."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

APP = """
from csp_bus.routing import route


async def accept(message):
    await message.reply_channel.asend({"accept": True})


app = [route("websocket.connect", accept)]
"""


@pytest.fixture
def reloading(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    (tmp_path / "ws_reload_app.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("CSP_BUS_LAYER", None)
    process = subprocess.Popen(
        [
            sys.executable, "-m", "csp_bus", "serve", "--reload", "--adapter", "http",
            "--adapter", "websocket", "--app", "ws_reload_app:app", "--bind", "127.0.0.1:0",
            "--graceful-timeout", "2", "--no-access-log",
        ],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(10)
    assert process.stderr is not None
    process.stderr.close()


def next_url(process: subprocess.Popen[str]) -> str:
    """The ws:// URL of the next 'csp-bus serve [pid]: ... on URL' line."""
    assert process.stderr is not None
    deadline = time.monotonic() + 20
    while True:
        assert time.monotonic() < deadline, "the server did not start"
        line = process.stderr.readline()
        assert line, f"the server exited: {process.wait()}"
        found = re.search(r"csp-bus serve \[\d+\]: .* on (\S+)", line)
        if found:
            return "ws" + found.group(1).rstrip(",").removeprefix("http")


def close_code(client: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed) as caught:
        client.recv(timeout=15)
    assert caught.value.rcvd is not None, "the server sent no close frame"
    return caught.value.rcvd.code


def test_reload_closes_with_service_restart(reloading, tmp_path: Path) -> None:
    url = next_url(reloading)
    with connect(url + "/") as client:
        time.sleep(1.2)  # mtimes have a resolution; make the change visibly later
        (tmp_path / "ws_reload_app.py").write_text(APP + "\n# changed\n")
        assert close_code(client) == 1012
    second = next_url(reloading)  # the restarted server serves again
    with connect(second + "/") as client:
        reloading.send_signal(signal.SIGTERM)
        assert close_code(client) == 1001  # a stop is still "going away"
    assert reloading.wait(20) == 0
