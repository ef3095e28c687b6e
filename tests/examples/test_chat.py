"""examples/chat end to end: the README's command, real clients, a real browser.

Every test starts ``csp-bus serve --adapter http --adapter websocket --app
examples.chat.app:routes`` as a subprocess on 127.0.0.1 (port 0; the port is read from
the server's start-up line), the way the README runs it:

- with the ``websockets`` client: two sockets in one room see each other's messages, a
  socket in another room sees none of them, bad paths and bad frames are refused;
- from headless Chromium (Debian's ``chromium``), driven over the Chrome DevTools
  protocol with the same ``websockets`` client: the page itself opens the WebSocket;
- across two server processes sharing a ``redis://`` layer: a message sent to process A
  reaches a client of process B.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"csp-bus serve \[\d+\]: .* on http://127\.0\.0\.1:(\d+)")


def readme_command() -> list[str]:
    """The README's "run the main job" command, after its install steps."""
    lines = (ROOT / "README.md").read_text().splitlines()
    marker = next(i for i, line in enumerate(lines) if line.startswith("# Run the main job"))
    command = next(line for line in lines[marker:] if not line.startswith("#"))
    return shlex.split(command.rsplit("&&", 1)[1])


def test_the_readme_runs_this_example() -> None:
    assert readme_command() == [
        ".venv/bin/csp-bus",
        "serve",
        "--adapter",
        "http",
        "--adapter",
        "websocket",
        "--app",
        "examples.chat.app:routes",
    ]
    assert "http://127.0.0.1:8000/chat/lobby/" in (ROOT / "README.md").read_text()


class ChatServer:
    """``csp-bus serve`` running the chat example in a subprocess."""

    def __init__(self, layer: str = "memory://") -> None:
        # The README's command (csp-bus = python -m csp_bus), on a free port.
        command = [sys.executable, "-m", "csp_bus", *readme_command()[1:]]
        command += ["--bind", "127.0.0.1:0", "--layer", layer, "--graceful-timeout", "3"]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.output: list[str] = []
        self.port = self._wait_ready()
        # Keep reading stderr (the access log) so the server never blocks on a full pipe.
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    def _wait_ready(self) -> int:
        assert self.process.stderr is not None
        timer = threading.Timer(30, self.process.kill)  # a server that never gets ready
        timer.start()
        try:
            for line in self.process.stderr:
                self.output.append(line)
                found = READY.search(line)
                if found:
                    return int(found.group(1))
        finally:
            timer.cancel()
        raise RuntimeError("the chat server did not start:\n" + "".join(self.output))

    def _read_rest(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.output.append(line)

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def stop(self) -> str:
        """SIGTERM, wait, and return what the server printed."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._drain.join(5)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return "".join(self.output)


@contextlib.contextmanager
def chat_server(layer: str = "memory://") -> Iterator[ChatServer]:
    server = ChatServer(layer)
    try:
        yield server
    finally:
        log = server.stop()
        assert "Traceback" not in log, log


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with chat_server() as running:
        yield running


def say(socket: ClientConnection, user: str, text: str) -> None:
    socket.send(json.dumps({"user": user, "text": text}))


def heard(socket: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    return json.loads(socket.recv(timeout=timeout))


# ------------------------------------------------------------------ a real WebSocket client


def test_page_is_served_on_the_room_path(server: ChatServer) -> None:
    with urllib.request.urlopen(server.url("/chat/lobby/"), timeout=10) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        page = response.read().decode()
    assert "new WebSocket(" in page
    # GET / lands in the default room (urllib follows the redirect)
    with urllib.request.urlopen(server.url("/"), timeout=10) as response:
        assert response.url == server.url("/chat/lobby/")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(server.url("/chat/no%20room/"), timeout=10)
    assert missing.value.code == 404
    missing.value.close()


def test_two_clients_in_a_room_hear_each_other_and_no_other_room(server: ChatServer) -> None:
    with (
        connect(server.url("/chat/kitchen/", "ws")) as alice,
        connect(server.url("/chat/kitchen/", "ws")) as bob,
        connect(server.url("/chat/garden/", "ws")) as carol,
    ):
        say(alice, "alice", "hello kitchen")
        expected = {"room": "kitchen", "user": "alice", "text": "hello kitchen"}
        assert heard(alice) == expected  # the sender is in the group too
        assert heard(bob) == expected
        say(bob, "bob", "hi alice")
        assert heard(alice)["text"] == "hi alice"
        assert heard(bob)["text"] == "hi alice"

        say(carol, "carol", "anyone in the garden?")
        assert heard(carol) == {"room": "garden", "user": "carol", "text": "anyone in the garden?"}
        # Whatever the kitchen said was broadcast before carol's own message came back to
        # her (one process, one layer: FIFO per channel); none of it reached her.
        with pytest.raises(TimeoutError):
            carol.recv(timeout=0.3)
        say(alice, "alice", "still here")
        assert heard(bob)["text"] == "still here"  # not carol's garden message
        assert heard(alice)["text"] == "still here"


def test_a_client_that_leaves_gets_no_more_messages_and_others_carry_on(
    server: ChatServer,
) -> None:
    with connect(server.url("/chat/hall/", "ws")) as alice:
        with connect(server.url("/chat/hall/", "ws")) as bob:
            say(bob, "bob", "bye")
            assert heard(alice)["text"] == "bye"
        # bob's websocket.disconnect took him out of the group; the room still works
        say(alice, "alice", "alone now")
        assert heard(alice)["text"] == "alone now"


def test_bad_input_is_refused(server: ChatServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(server.url("/elsewhere/", "ws"))
    assert refused.value.response.status_code == 403
    with connect(server.url("/chat/lobby/", "ws")) as socket:
        say(socket, "alice", "   ")  # blank: nothing is broadcast
        socket.send(json.dumps(["not", "an", "object"]))  # ignored
        say(socket, "", "x" * 5000)  # trimmed, and a default name
        message = heard(socket)
        assert message["user"] == "anonymous"
        assert len(message["text"]) == 2000
        socket.send("not json")
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1007


def broadcast_misses(server: ChatServer, members: int) -> int:
    """Open ``members`` sockets in one room, send once: how many never got it."""
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(connect(server.url("/chat/big/", "ws"))) for _ in range(members)
        ]
        say(sockets[0], "alice", "can everyone hear me?")
        missed = 0
        deadline = time.monotonic() + 5  # for all of them together
        for socket in sockets:
            try:
                left = max(0.0, deadline - time.monotonic())
                assert heard(socket, timeout=left)["text"] == "can everyone hear me?"
            except TimeoutError:
                missed += 1
        return missed


def test_a_room_larger_than_the_channel_capacity_hears_every_message(server: ChatServer) -> None:
    """One send_group is one message on the process's reply prefix, however many of the
    room's sockets that process serves (docs/concepts.md): 120 > the capacity of 100."""
    assert broadcast_misses(server, 120) == 0


# ----------------------------------------------------------------------- across processes


def test_group_broadcast_reaches_a_client_of_another_server_process(redis_url: str) -> None:
    pytest.importorskip("csp_bus.layers.redis", reason="the Redis layer is not importable")
    with (
        chat_server(redis_url) as first,
        chat_server(redis_url) as second,
        connect(first.url("/chat/ops/", "ws")) as alice,
        connect(second.url("/chat/ops/", "ws")) as bob,
        connect(second.url("/chat/dev/", "ws")) as carol,
    ):
        say(alice, "alice", "from process A")
        assert heard(bob) == {"room": "ops", "user": "alice", "text": "from process A"}
        assert heard(alice)["text"] == "from process A"
        say(bob, "bob", "from process B")
        assert heard(alice)["text"] == "from process B"
        assert heard(bob)["text"] == "from process B"
        say(carol, "carol", "dev only")
        assert heard(carol)["text"] == "dev only"
        with pytest.raises(TimeoutError):
            carol.recv(timeout=0.3)
        with pytest.raises(TimeoutError):
            alice.recv(timeout=0.3)


# ------------------------------------------------------------------ headless Chromium (CDP)


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """Headless Chromium driven over the Chrome DevTools protocol (one WebSocket).

    The browser picks its own debugging port (``--remote-debugging-port=0``) and writes
    it to ``DevToolsActivePort`` in the fresh profile directory. Pages are attached in
    "flat" mode, so every command goes over the browser's one socket with a
    ``sessionId``.
    """

    FLAGS = (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--remote-debugging-port=0",
    )

    def __init__(self, binary: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="csp-bus-chromium-")
        self.log = open(os.path.join(self.profile, "chromium.log"), "w+b")  # noqa: SIM115
        self.process = subprocess.Popen(
            [binary, *self.FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.stack = contextlib.ExitStack()
        self.socket = self.stack.enter_context(
            connect(self._endpoint(), max_size=None, open_timeout=30)
        )

    def _endpoint(self) -> str:
        marker = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the browser writes it once it listens
            if self.process.poll() is not None:
                break
            with contextlib.suppress(OSError):
                port, path = marker.read_text().split("\n")[:2]
                if port and path:
                    return f"ws://127.0.0.1:{port}{path}"
            time.sleep(0.05)
        self.log.seek(0)
        raise RuntimeError(f"chromium did not start: {self.log.read().decode(errors='replace')}")

    def command(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
        self.next_id += 1
        ident = self.next_id
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params or {}, **kw}))
        while True:
            reply = json.loads(self.socket.recv(timeout=30))
            if "id" not in reply:
                self.events.append(reply)  # for wait_event
            elif reply["id"] == ident:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def wait_event(self, method: str, session: str, **params: Any) -> dict[str, Any]:
        """The next event ``method`` of page ``session`` with these ``params`` values."""

        def wanted(event: dict[str, Any]) -> bool:
            if event["method"] != method or event.get("sessionId") != session:
                return False
            return all(event["params"].get(k) == v for k, v in params.items())

        while True:
            for index, event in enumerate(self.events):
                if wanted(event):
                    del self.events[: index + 1]
                    return event
            self.events.clear()
            self.events.append(json.loads(self.socket.recv(timeout=30)))

    def open(self, url: str) -> Page:
        """A new tab showing ``url``, once its ``load`` event fired."""
        target = self.command("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.command("Target.attachToTarget", {"targetId": target, "flatten": True})
        session = attached["sessionId"]
        self.command("Page.enable", sessionId=session)
        self.command("Page.setLifecycleEventsEnabled", {"enabled": True}, sessionId=session)
        navigation = self.command("Page.navigate", {"url": url}, sessionId=session)
        if navigation.get("errorText"):
            raise RuntimeError(f"cannot open {url}: {navigation['errorText']}")
        # the load of *this* navigation, not of the about:blank the tab started with
        self.wait_event(
            "Page.lifecycleEvent", session, name="load", loaderId=navigation["loaderId"]
        )
        return Page(self, session)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.command("Browser.close")
        with contextlib.suppress(Exception):
            self.stack.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` (awaited if it is a promise)."""
        result = self.browser.command(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            sessionId=self.session,
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"in the page: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, condition: str, limit: float = 10) -> Any:
        """Wait (inside the page) until the JavaScript ``condition`` is truthy."""
        return self.evaluate(
            f"""new Promise((resolve, reject) => {{
                const until = Date.now() + {int(limit * 1000)};
                (function check() {{
                    let value;
                    try {{ value = ({condition}); }} catch (error) {{ value = undefined; }}
                    if (value) resolve(value);
                    else if (Date.now() > until) reject(new Error("timed out: " + {condition!r}));
                    else setTimeout(check, 20);
                }})();
            }})"""
        )

    def send(self, text: str) -> None:
        self.evaluate(
            f"""document.getElementById("text").value = {json.dumps(text)};
                document.getElementById("form").requestSubmit();"""
        )

    def messages(self) -> list[str]:
        return self.evaluate(
            """[...document.querySelectorAll("#log .message")].map(e => e.textContent)"""
        )

    def wait_message(self, line: str) -> None:
        self.wait_for(
            "[...document.querySelectorAll('#log .message')]"
            f".some(e => e.textContent === {json.dumps(line)})"
        )


@pytest.fixture
def browser() -> Iterator[Browser]:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium binary (Debian: apt-get install -y chromium)")
    running = Browser(binary)
    try:
        yield running
    finally:
        running.close()


def test_browser_pages_in_one_room_see_each_other_and_not_another_room(
    server: ChatServer, browser: Browser
) -> None:
    alice = browser.open(server.url("/chat/lobby/?name=alice"))
    bob = browser.open(server.url("/chat/lobby/?name=bob"))
    carol = browser.open(server.url("/chat/attic/?name=carol"))
    for page in (alice, bob, carol):
        page.wait_for("document.body.dataset.state === 'open'")
    assert alice.evaluate("document.getElementById('room').textContent") == "lobby"

    alice.send("hello from alice")
    bob.wait_message("alice: hello from alice")
    alice.wait_message("alice: hello from alice")
    bob.send("hi alice, bob here")
    alice.wait_message("bob: hi alice, bob here")

    carol.send("is this the attic?")
    carol.wait_message("carol: is this the attic?")
    alice.send("last one")
    bob.wait_message("alice: last one")
    alice.wait_message("alice: last one")

    assert carol.messages() == ["carol: is this the attic?"]
    expected = ["alice: hello from alice", "bob: hi alice, bob here", "alice: last one"]
    assert alice.messages() == expected
    assert bob.messages() == expected
