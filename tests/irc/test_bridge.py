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
    await alice.send(f"JOIN {bridge.IRC_CHANNEL}")
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
        assert connected["event"].startswith("connected to IRC")
        await alice.expect(
            lambda w: len(w) > 1 and w[0].startswith(b":bridge!") and w[1] == b"JOIN"
        )

        # IRC -> room
        await alice.send(f"PRIVMSG {bridge.IRC_CHANNEL} :hello room")
        assert await room_sees() == {"user": "alice@irc", "text": "hello room", "bridge": "irc"}
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
