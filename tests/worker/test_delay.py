"""Delayed messages: the delay service, send_later, and surviving a restart on Redis."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import trio
import trio.testing

from csp_bus import open_layer
from csp_bus.consumers import Message, using
from csp_bus.delay import (
    DELAY_CHANNEL,
    DelayService,
    MemoryDelayStore,
    RedisDelayStore,
    asend_later,
    delay_message,
    delay_store_for,
    send_later,
)
from csp_bus.embedded import run_workers
from csp_bus.errors import UsageError
from csp_bus.layers.memory import MemoryLayer
from csp_bus.routing import route
from csp_bus.sync import bind


async def test_a_delayed_message_arrives_after_its_delay_and_not_before(
    layer: MemoryLayer, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        service = await nursery.start(DelayService(layer).run)
        start = trio.current_time()
        await layer.send(DELAY_CHANNEL, {"channel": "later", "content": {"n": 1}, "delay": 1500})
        await layer.send(DELAY_CHANNEL, {"channel": "later", "content": {"n": 0}, "delay": 500})
        channel, message = await layer.receive("later")
        assert message == {"n": 0}
        assert trio.current_time() - start == pytest.approx(0.5, abs=0.01)
        await trio.sleep_until(start + 1.49)
        assert await layer.receive_nowait("later") is None
        channel, message = await layer.receive("later")
        assert (channel, message) == ("later", {"n": 1})
        assert trio.current_time() - start == pytest.approx(1.5, abs=0.01)
        service.stop()
    assert service.stats.sent == 2


async def test_invalid_delay_messages_are_logged_and_dropped(
    layer: MemoryLayer, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        service = await nursery.start(DelayService(layer).run)
        with caplog.at_level(logging.WARNING, logger="csp_bus.delay"):
            for bad in (
                {"content": {}, "delay": 1},
                {"channel": "bad name", "content": {}, "delay": 1},
                {"channel": "ok", "content": "not a dict", "delay": 1},
                {"channel": "ok", "content": {}, "delay": -5},
                {"channel": "ok", "content": {}, "delay": "soon"},
            ):
                await layer.send(DELAY_CHANNEL, bad)
            await layer.send(DELAY_CHANNEL, {"channel": "ok", "content": {"fine": 1}, "delay": 0})
            assert (await layer.receive("ok"))[1] == {"fine": 1}
        service.stop()
    assert service.stats.invalid == 5
    assert len([r for r in caplog.records if "invalid asgi.delay" in r.getMessage()]) == 5


async def test_full_target_channel_is_retried_not_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with MemoryLayer(clock=trio.current_time) as small:
        small.options = type(small.options)(capacity=1)
        async with trio.open_nursery() as nursery:
            service = await nursery.start(DelayService(small).run)
            await small.send("target", {"first": True})  # now full
            await small.send(DELAY_CHANNEL, {"channel": "target", "content": {"n": 2}, "delay": 10})
            await trio.sleep(0.5)
            assert service.stats.retried >= 1
            assert (await small.receive("target"))[1] == {"first": True}
            assert (await small.receive("target"))[1] == {"n": 2}
            service.stop()
        assert service.stats.sent == 1 and service.stats.dropped == 0


async def test_memory_store_is_bounded(
    layer: MemoryLayer, autojump_clock: trio.testing.MockClock
) -> None:
    store = MemoryDelayStore(max_pending=3)
    with trio.fail_after(100):  # virtual time
        async with trio.open_nursery() as nursery:
            service = await nursery.start(
                lambda task_status: DelayService(layer, store=store).run(task_status=task_status)
            )
            for n in range(5):
                await layer.send(
                    DELAY_CHANNEL, {"channel": "x", "content": {"n": n}, "delay": 10_000}
                )
            await trio.sleep(1)
            # Three wait in the store, two stay on asgi.delay (its capacity applies there).
            assert await store.pending() == 3
            assert (await layer.stats(DELAY_CHANNEL))["messages_pending"] == 2
            assert [(await layer.receive("x"))[1]["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
            service.stop()


async def test_send_later_from_a_consumer_and_asend_later(
    layer: MemoryLayer, autojump_clock: trio.testing.MockClock, until: Any
) -> None:
    def schedule(message: Message) -> None:
        send_later("reminders", {"text": message["text"]}, delay=2.0)

    async with trio.open_nursery() as nursery:
        service = await nursery.start(DelayService(layer).run)
        worker = await nursery.start(run_workers, layer, [route("schedule", schedule)])
        start = trio.current_time()
        await layer.send("schedule", {"text": "tea"})
        await asend_later("reminders", {"text": "soon"}, 1.0, layer=layer)
        assert (await layer.receive("reminders"))[1] == {"text": "soon"}
        assert (await layer.receive("reminders"))[1] == {"text": "tea"}
        assert trio.current_time() - start >= 2.0
        worker.stop()
        service.stop()


async def test_send_later_in_plain_code(layer: MemoryLayer) -> None:
    with using(bind(layer)):
        await trio.to_thread.run_sync(lambda: send_later("c", {"x": 1}, 0.25))
    _, message = await layer.receive(DELAY_CHANNEL)
    assert message == {"channel": "c", "content": {"x": 1}, "delay": 250}


def test_delay_message_validation() -> None:
    assert delay_message("a", {}, 0.0001)["delay"] == 1  # rounded up: never early
    with pytest.raises(UsageError):
        delay_message("a", {}, -1)
    with pytest.raises(UsageError):
        delay_message("a", {}, float("inf"))
    with pytest.raises(UsageError):
        delay_message("a b", {}, 1)


@pytest.mark.redis
async def test_due_messages_survive_a_restart_on_redis(redis_url: str) -> None:
    async with open_layer(redis_url) as layer:
        await layer.flush()
        assert isinstance(delay_store_for(layer), RedisDelayStore)
        # First service: takes the message off asgi.delay into Redis, then stops.
        async with trio.open_nursery() as nursery:
            first = await nursery.start(DelayService(layer).run)
            sent_at = time.time()
            await layer.send(DELAY_CHANNEL, {"channel": "later", "content": {"n": 7}, "delay": 600})
            with trio.fail_after(5):
                while first.stats.received < 1:  # noqa: ASYNC110 - a counter, no event
                    await trio.sleep(0.01)
            first.stop()
        assert await delay_store_for(layer).pending() == 1
        assert await layer.receive_nowait("later") is None
    # The service is gone; a new one on a new connection delivers on time, not before.
    async with open_layer(redis_url) as layer, trio.open_nursery() as nursery:
        second = await nursery.start(DelayService(layer).run)
        with trio.fail_after(5):
            _, message = await layer.receive("later")
        waited = time.time() - sent_at
        assert message == {"n": 7}
        assert waited >= 0.6
        assert await delay_store_for(layer).pending() == 0
        second.stop()
        await layer.flush()


@pytest.mark.redis
async def test_two_services_on_redis_send_each_message_once(redis_url: str) -> None:
    async with open_layer(redis_url) as layer, trio.open_nursery() as nursery:
        await layer.flush()
        services = [await nursery.start(DelayService(layer).run) for _ in range(2)]
        for n in range(20):
            await layer.send(DELAY_CHANNEL, {"channel": "once", "content": {"n": n}, "delay": 100})
        got = []
        with trio.fail_after(10):
            for _ in range(20):
                got.append((await layer.receive("once"))[1]["n"])
        await trio.sleep(0.3)
        assert await layer.receive_nowait("once") is None
        assert sorted(got) == list(range(20))
        for service in services:
            service.stop()
        await layer.flush()
