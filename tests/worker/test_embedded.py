"""Embedded mode: workers inside your own Trio program, on the same layer instance."""

from __future__ import annotations

import pytest
import trio

from csp_bus import open_layer
from csp_bus.consumers import Message
from csp_bus.embedded import run_workers
from csp_bus.routing import RoutingError, route
from csp_bus.sync import connect

URL = "memory://?capacity=50"


def via_sync_connect(message: Message) -> None:
    # Plain library code that knows only the URL reaches this program's layer instance.
    with connect(URL) as bus:
        bus.send(message["reply_channel"], {"via": "sync.connect"})


async def test_consumers_reach_the_same_layer_instance() -> None:
    async with open_layer(URL) as layer, trio.open_nursery() as nursery:
        worker = await nursery.start(run_workers, layer, [route("embedded.in", via_sync_connect)])
        reply = await layer.new_channel("emb?")
        await layer.send("embedded.in", {"reply_channel": reply})
        with trio.fail_after(5):
            assert (await layer.receive(reply))[1] == {"via": "sync.connect"}
        worker.stop()


async def test_cancelling_the_scope_stops_at_once() -> None:
    async with open_layer(URL) as layer:
        with trio.move_on_after(0.2) as scope:
            await run_workers(layer, [route("x", via_sync_connect)])
        assert scope.cancelled_caught


async def test_invalid_routes_fail_before_started() -> None:
    async with open_layer(URL) as layer, trio.open_nursery() as nursery:
        with pytest.raises(RoutingError, match=r"routes\[0\]"):
            await nursery.start(run_workers, layer, [route("x", "nowhere.at_all")])
