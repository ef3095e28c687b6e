"""Outages with a real ``redis-server`` the test stops and restarts.

During an outage every operation fails fast with ``LayerUnavailable`` (never hangs);
receives that were waiting fail too; after the restart operations and receives resume.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from csp_bus import open_layer
from csp_bus.errors import LayerUnavailable

pytestmark = pytest.mark.redis


async def eventually(operation: Any, limit: float = 10) -> Any:
    """Retry ``operation`` while the layer reconnects (backoff), up to ``limit`` s."""
    with trio.fail_after(limit):
        while True:
            try:
                return await operation()
            except LayerUnavailable:
                await trio.sleep(0.05)


@pytest.mark.parametrize("channel", ["plain", "proc!conn"])
async def test_outage_fails_fast_and_receives_resume(redis_servers: Any, channel: str) -> None:
    server = redis_servers.start()
    url = f"{server.url}/0?prefix=fault&connect_timeout=0.5&timeout=1"
    receive_name = channel.split("!")[0] + "!" if "!" in channel else channel
    async with open_layer(url) as layer:
        await layer.send(channel, {"n": 1})
        assert await layer.receive(receive_name) == (channel, {"n": 1})

        woke = trio.Event()

        async def waiting_receive() -> None:
            with pytest.raises(LayerUnavailable):
                await layer.receive(receive_name)
            woke.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiting_receive)
            await trio.sleep(0.2)
            server.stop()
            start = trio.current_time()
            with trio.fail_after(3):  # the waiting receive wakes with an error, no hang
                await woke.wait()
            assert trio.current_time() - start < 3
        for operation in (
            lambda: layer.send(channel, {"n": 2}),
            lambda: layer.receive(receive_name),
            lambda: layer.receive_nowait(receive_name),
            lambda: layer.group_add("g", channel),
            lambda: layer.send_group("g", {"n": 2}),
        ):
            start = trio.current_time()
            with pytest.raises(LayerUnavailable):
                await operation()
            assert trio.current_time() - start < 1.5, "an operation in an outage must fail fast"

        server.start()
        await eventually(lambda: layer.send(channel, {"n": 3}))

        async def receive_once() -> Any:
            with trio.fail_after(5):
                return await layer.receive(receive_name)

        assert await eventually(receive_once) == (channel, {"n": 3})
        # a receive that waits across nothing in particular works again, too
        async with trio.open_nursery() as nursery:
            got: list[Any] = []

            async def later() -> None:
                got.append(await layer.receive(receive_name))

            nursery.start_soon(later)
            await trio.sleep(0.1)
            await layer.send(channel, {"n": 4})
        assert got == [(channel, {"n": 4})]


async def test_layer_opens_while_redis_is_down_and_works_once_it_is_up(
    redis_servers: Any,
) -> None:
    server = redis_servers.new()
    url = f"{server.url}/0?prefix=late&connect_timeout=0.5&timeout=1"
    async with open_layer(url) as layer:
        with pytest.raises(LayerUnavailable):
            await layer.send("c", {})
        server.start()
        await eventually(lambda: layer.send("c", {"ok": True}))
        assert await layer.receive("c") == ("c", {"ok": True})


async def test_close_during_an_outage_does_not_hang(redis_servers: Any) -> None:
    server = redis_servers.start()
    url = f"{server.url}/0?prefix=closing&connect_timeout=0.5&timeout=1"
    with trio.fail_after(5):
        async with open_layer(url) as layer:
            await layer.send("c", {})
            server.stop()
            with pytest.raises(LayerUnavailable):
                await layer.send("c", {})
