"""examples/irc_bridge: IRC channel <-> chat room group, with a real IRC server."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import trio
from csp_bus.adapters.irc.client import IrcConfig, IrcServerConfig, run_irc

from csp_bus.layers import open_layer

APP = Path(__file__).resolve().parents[2] / "examples" / "irc_bridge" / "app.py"


def load_bridge() -> Any:
    spec = importlib.util.spec_from_file_location("irc_bridge_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_bridge_carries_both_ways(irc_server: Any, humans: Any) -> None:
    worker_module = pytest.importorskip("csp_bus.worker", reason="the bridge runs in a Worker")
    bridge = load_bridge()
    alice = await humans("alice")
    await alice.join(bridge.IRC_CHANNEL)
    config = IrcConfig(
        servers=(
            IrcServerConfig(
                host=irc_server.host,
                port=irc_server.port,
                nick="bridge",
                channels=(bridge.IRC_CHANNEL,),
            ),
        ),
        flood_burst=10,
        flood_rate=20.0,
    )
    async with open_layer("memory://") as layer, trio.open_nursery() as nursery:
        # The browser's WebSocket connection, as the room's connect consumer adds it.
        browser = "test.browser"
        await layer.group_add(bridge.ROOM_GROUP, browser)

        async def room_sees() -> dict[str, Any]:
            with trio.fail_after(10):
                _, message = await layer.receive(browser)
            return dict(json.loads(message["text"]))

        await nursery.start(worker_module.Worker(layer, bridge.bridge_routes, threads=2).run)
        await nursery.start(run_irc, layer, config)
        connected = await room_sees()
        assert connected["event"] is True
        assert connected["text"].startswith("(connected to IRC")
        await alice.expect(
            lambda w: len(w) > 1 and w[0].startswith(b":bridge!") and w[1] == b"JOIN"
        )

        # IRC -> room
        await alice.send(f"PRIVMSG {bridge.IRC_CHANNEL} :hello room")
        assert await room_sees() == {
            "room": bridge.ROOM,
            "user": "alice@irc",
            "text": "hello room",
            "bridge": "irc",
        }
        await alice.send(f"PRIVMSG {bridge.IRC_CHANNEL} :\x01ACTION waves\x01")
        assert (await room_sees())["text"] == "* alice waves"

        # room -> IRC (what the room's receive consumer sends to the group)
        said = {"user": "bob", "text": "hello irc\nsecond line"}
        await layer.send_group(bridge.ROOM_GROUP, {"text": json.dumps(said)})
        assert await room_sees() == said  # the browser sees it too
        assert await alice.expect_privmsg("bridge") == "<bob> hello irc"
        assert await alice.expect_privmsg("bridge") == "second line"
        # nothing that came from IRC went back to IRC
        assert not any(b"alice@irc" in line for line in alice.seen)
        nursery.cancel_scope.cancel()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_whole_bus_browser_to_irc_and_back(irc_server: Any, humans: Any) -> None:
    """``csp-bus serve`` with the http, websocket and irc adapters and the chat example:
    a WebSocket client (the browser) and an IRC client talk through the bus."""
    import os
    import subprocess
    import sys

    pytest.importorskip("csp_bus.embedded", reason="--app needs the embedded workers")
    root = APP.parents[2]
    if not (root / "examples" / "chat" / "app.py").exists():
        pytest.skip("the browser chat example (examples/chat) is not there")
    from websockets.sync.client import connect as ws_connect

    alice = await humans("alice")
    await alice.join("#csp-bus")
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(root))
    env.pop("CSP_BUS_LAYER", None)
    process = await trio.lowlevel.open_process(
        [
            sys.executable, "-m", "csp_bus", "serve",
            "--adapter", "http", "--adapter", "websocket", "--adapter", "irc",
            "--app", "examples.irc_bridge.with_chat:routes",
            "--bind", f"127.0.0.1:{port}", "--no-access-log",
            "--irc-server", f"{irc_server.host}:{irc_server.port}",
            "--irc-nick", "bridge", "--irc-channels", "#csp-bus",
        ],
        env=env,
        cwd=str(root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await alice.expect(
            lambda w: len(w) > 1 and w[0].startswith(b":bridge!") and w[1] == b"JOIN", 20
        )

        def browser() -> list[dict[str, Any]]:
            seen = []
            with ws_connect(f"ws://127.0.0.1:{port}/chat/lobby/", open_timeout=10) as socket:
                socket.send(json.dumps({"user": "bob", "text": "hello from the browser"}))
                while len(seen) < 2:
                    data = json.loads(socket.recv(timeout=10))
                    if not data.get("event"):  # e.g. "(connected to IRC #csp-bus)"
                        seen.append(data)
            return seen

        async def irc_side() -> None:
            assert await alice.expect_privmsg("bridge", 20) == "<bob> hello from the browser"
            await alice.send("PRIVMSG #csp-bus :hello from IRC")

        async with trio.open_nursery() as both:
            both.start_soon(irc_side)
            seen = await trio.to_thread.run_sync(browser)
        assert seen[0] == {"room": "lobby", "user": "bob", "text": "hello from the browser"}
        assert seen[1]["user"] == "alice@irc" and seen[1]["text"] == "hello from IRC"
    finally:
        process.terminate()
        with trio.move_on_after(20):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
