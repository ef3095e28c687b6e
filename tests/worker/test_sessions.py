"""The session stores behind enforce_ordering: memory, channel-based, Redis."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from csp_bus import open_layer
from csp_bus.layers.memory import MemoryLayer
from csp_bus.sessions import (
    ChannelSessionStore,
    MemorySessionStore,
    RedisSessionStore,
    SessionStore,
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
