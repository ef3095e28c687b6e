"""enforce_ordering: shuffled input is handled in order, per reply channel."""

from __future__ import annotations

import logging
import random
import threading
from typing import Any

import pytest
import trio
import trio.testing

from csp_bus.consumers import Message, WebsocketConsumer
from csp_bus.embedded import run_workers
from csp_bus.layers.memory import MemoryLayer
from csp_bus.ordering import enforce_ordering
from csp_bus.routing import route, route_class
from csp_bus.sessions import MemorySessionStore, session_key, session_store_for


def shuffled_connection(reply: str, receives: int, rng: random.Random) -> list[tuple[str, dict]]:
    messages = [("websocket.connect", {"reply_channel": reply, "path": "/", "order": 0})]
    messages += [
        ("websocket.receive", {"reply_channel": reply, "path": "/", "order": n, "text": str(n)})
        for n in range(1, receives + 1)
    ]
    messages.append(
        ("websocket.disconnect", {"reply_channel": reply, "path": "/", "order": receives + 1})
    )
    rng.shuffle(messages)
    return messages


@pytest.mark.parametrize("style", ["functions", "async", "class"])
async def test_shuffled_messages_are_handled_in_order(
    layer: MemoryLayer, style: str, until: Any
) -> None:
    # Real clock on purpose: the backoff of held-back messages must be real time while
    # real threads run their predecessors (a mock clock would jump through the retries).
    seen: dict[str, list[int]] = {}
    lock = threading.Lock()

    def record(message: Message) -> None:
        with lock:
            seen.setdefault(message["reply_channel"], []).append(message["order"])

    if style == "functions":
        consumer = enforce_ordering(record)
        routes = [
            route(name, consumer)
            for name in ("websocket.connect", "websocket.receive", "websocket.disconnect")
        ]
    elif style == "async":

        @enforce_ordering
        async def async_consumer(message: Message) -> None:
            await trio.sleep(random.random() / 100)
            record(message)

        routes = [
            route(name, async_consumer)
            for name in ("websocket.connect", "websocket.receive", "websocket.disconnect")
        ]
    else:

        class Ordered(WebsocketConsumer):
            strict_ordering = True

            def raw_connect(self, message, **kwargs):
                record(message)

            def raw_receive(self, message, **kwargs):
                record(message)

            def raw_disconnect(self, message, **kwargs):
                record(message)

        routes = [route_class(Ordered)]

    rng = random.Random(7)
    replies = [await layer.new_channel("ws?") for _ in range(3)]
    batch = [m for reply in replies for m in shuffled_connection(reply, 12, rng)]
    rng.shuffle(batch)
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(
            lambda task_status: run_workers(
                layer, routes, threads=4, message_retries=100, task_status=task_status
            )
        )
        for channel, content in batch:
            await layer.send(channel, content)
        await until(lambda: sum(map(len, seen.values())) >= len(batch))
        worker.stop()
    assert worker.stats.dropped == 0
    for reply in replies:
        assert seen[reply] == list(range(14))
    # The disconnect ended each session: nothing left in the store.
    store = session_store_for(layer)
    assert isinstance(store, MemorySessionStore) and len(store) == 0


async def test_missing_predecessor_is_dropped_with_a_hint(
    layer: MemoryLayer,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    until: Any,
) -> None:
    handled: list[int] = []

    @enforce_ordering
    def consumer(message: Message) -> None:
        handled.append(message["order"])

    async with trio.open_nursery() as nursery:
        worker = await nursery.start(
            lambda task_status: run_workers(
                layer,
                [route("websocket.receive", consumer)],
                message_retries=5,
                task_status=task_status,
            )
        )
        with caplog.at_level(logging.WARNING):
            await layer.send("websocket.receive", {"reply_channel": "r?1", "order": 1})
            await until(lambda: worker.stats.dropped >= 1)
        worker.stop()
    assert handled == []
    assert any("waits for order 0" in r.getMessage() for r in caplog.records)


async def test_stale_duplicates_are_skipped_and_failures_advance(
    layer: MemoryLayer, until: Any
) -> None:
    handled: list[int] = []

    @enforce_ordering
    def consumer(message: Message) -> None:
        handled.append(message["order"])
        if message["order"] == 1:
            raise RuntimeError("a failing message must not block the connection")

    async with trio.open_nursery() as nursery:
        worker = await nursery.start(run_workers, layer, [route("websocket.receive", consumer)])
        for sent, order in enumerate((0, 1, 2, 1), 1):
            await layer.send("websocket.receive", {"reply_channel": "r?2", "order": order})
            await until(lambda n=sent: worker.stats.handled + worker.stats.failed >= n)
        worker.stop()
    assert handled == [0, 1, 2]
    assert worker.stats.failed == 1


@pytest.mark.redis
async def test_ordering_on_redis_keeps_state_in_redis(redis_url: str, until: Any) -> None:
    from csp_bus import open_layer
    from csp_bus.sessions import RedisSessionStore

    seen: list[int] = []
    lock = threading.Lock()

    @enforce_ordering
    def consumer(message: Message) -> None:
        with lock:
            seen.append(message["order"])

    names = ("websocket.connect", "websocket.receive", "websocket.disconnect")
    async with open_layer(redis_url) as layer, trio.open_nursery() as nursery:
        await layer.flush()
        store = session_store_for(layer)
        assert isinstance(store, RedisSessionStore)
        worker = await nursery.start(
            lambda task_status: run_workers(
                layer,
                [route(name, consumer) for name in names],
                threads=4,
                message_retries=100,
                task_status=task_status,
            )
        )
        reply = await layer.new_channel("ws?")
        batch = shuffled_connection(reply, 10, random.Random(3))
        disconnect = next(m for m in batch if m[0] == "websocket.disconnect")
        for channel, content in batch:
            if channel != "websocket.disconnect":
                await layer.send(channel, content)
        await until(lambda: worker.stats.handled >= 11 or worker.stats.dropped)
        # Mid-connection the next expected order lives in Redis, not in this process.
        key = "order." + session_key(reply)
        assert await store.load(key) == {"next_order": 11}
        await layer.send(*disconnect)
        await until(lambda: worker.stats.handled >= 12 or worker.stats.dropped)
        worker.stop()
        assert worker.stats.dropped == 0
        assert seen == list(range(12))
        assert await store.load(key) is None  # the disconnect ended the session
        await layer.flush()
