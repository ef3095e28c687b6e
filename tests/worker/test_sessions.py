"""The session stores behind enforce_ordering: memory, channel-based, Redis."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from csp_bus import open_layer
from csp_bus.consumers import Message
from csp_bus.embedded import run_workers
from csp_bus.layers.memory import MemoryLayer
from csp_bus.routing import route
from csp_bus.sessions import (
    ChannelSessionStore,
    MemorySessionStore,
    RedisSessionStore,
    SessionStore,
    channel_session,
    session_key,
    session_store_for,
)


async def roundtrip(store: SessionStore) -> None:
    key = session_key("websocket.reply!abc")
    assert await store.load(key) is None
    await store.save(key, {"next_order": 3, "blob": b"\x00"})
    assert await store.load(key) == {"next_order": 3, "blob": b"\x00"}
    assert await store.load(key) == {"next_order": 3, "blob": b"\x00"}  # reads keep it
    await store.save(key, {"next_order": 4})
    assert await store.load(key) == {"next_order": 4}
    await store.delete(key)
    assert await store.load(key) is None
    await store.delete(key)  # absent: no error


async def test_memory_store_expires(autojump_clock: trio.testing.MockClock) -> None:
    store = MemorySessionStore()
    await roundtrip(store)
    await store.save("k", {"a": 1}, ttl=10)
    await trio.sleep(9.9)
    assert await store.load("k") == {"a": 1}
    await trio.sleep(0.2)
    assert await store.load("k") is None
    assert len(store) == 0


async def test_channel_store_works_on_any_layer(layer: MemoryLayer) -> None:
    await roundtrip(ChannelSessionStore(layer))


async def test_one_store_per_layer(layer: MemoryLayer) -> None:
    assert session_store_for(layer) is session_store_for(layer)
    assert isinstance(session_store_for(layer), MemorySessionStore)
    async with MemoryLayer() as other:
        assert session_store_for(other) is not session_store_for(layer)


@pytest.mark.redis
async def test_redis_store(redis_url: str) -> None:
    async with open_layer(redis_url) as layer:
        store = session_store_for(layer)
        assert isinstance(store, RedisSessionStore)
        await roundtrip(store)
        await store.save("short", {"a": 1}, ttl=0.05)
        await trio.sleep(0.2)
        assert await store.load("short") is None
        await layer.flush()


@pytest.mark.parametrize("style", ["sync", "async"])
async def test_channel_session_follows_the_connection(
    layer: MemoryLayer, style: str, until: Any
) -> None:
    seen: list[Any] = []

    def connect(message: Message) -> None:
        message.channel_session["name"] = message["name"]

    def receive(message: Message) -> None:
        seen.append(message.channel_session.get("name"))
        message.channel_session["count"] = message.channel_session.get("count", 0) + 1

    def disconnect(message: Message) -> None:
        seen.append(message.channel_session.get("count"))

    consumers = [connect, receive, disconnect]
    if style == "async":

        def asyncify(function: Any) -> Any:
            async def consumer(message: Message) -> None:
                function(message)

            return consumer

        consumers = [asyncify(c) for c in consumers]
    names = ("websocket.connect", "websocket.receive", "websocket.disconnect")
    routes = [route(n, channel_session(c)) for n, c in zip(names, consumers, strict=True)]
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(
            lambda task_status: run_workers(layer, routes, threads=1, task_status=task_status)
        )
        steps = [
            ("websocket.connect", {"reply_channel": "ws?a", "name": "ada"}),
            ("websocket.connect", {"reply_channel": "ws?b", "name": "bob"}),
            ("websocket.receive", {"reply_channel": "ws?a"}),
            ("websocket.receive", {"reply_channel": "ws?b"}),
            ("websocket.receive", {"reply_channel": "ws?a"}),
            ("websocket.disconnect", {"reply_channel": "ws?a"}),
        ]
        # One at a time: across channels the layer is fair, not FIFO (that is what
        # enforce_ordering is for).
        for done, (channel, content) in enumerate(steps, 1):
            await layer.send(channel, content)
            await until(lambda n=done: worker.stats.handled >= n, 10)
        worker.stop()
    assert seen == ["ada", "bob", "ada", 2]
    store = session_store_for(layer)
    assert await store.load("session." + session_key("ws?a")) is None  # ended
    assert await store.load("session." + session_key("ws?b")) == {"name": "bob", "count": 1}
