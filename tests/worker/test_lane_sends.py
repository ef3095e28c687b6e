"""A sync consumer's send/send_group are posted to its lane task without waiting for
their outcome: order kept, failures surfaced (by the next layer call, or as the
consumer's failure when it has returned)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable

import pytest
import trio

from csp_bus.consumers import Channel, Group, Message, current_context
from csp_bus.embedded import run_workers
from csp_bus.errors import ChannelFull
from csp_bus.layers.memory import MemoryLayer
from csp_bus.layers.options import LayerOptions
from csp_bus.routing import route

Until = Callable[..., Awaitable[None]]


async def test_posted_sends_and_blocking_calls_keep_their_order(
    layer: MemoryLayer, until: Until
) -> None:
    def consumer(message: Message) -> None:
        out = Channel("out")
        out.send({"n": 1})
        Group("g").add("member")  # blocking: runs after the send posted before it
        Group("g").send({"n": 2})
        out.send({"n": 3})
        out.send({"n": 4})

    async with trio.open_nursery() as nursery:
        worker = await nursery.start(
            lambda task_status: run_workers(
                layer, [route("in", consumer)], threads=1, task_status=task_status
            )
        )
        await layer.send("in", {})
        await until(lambda: worker.stats.handled == 1)
        assert [(await layer.receive("out"))[1]["n"] for _ in range(3)] == [1, 3, 4]
        assert (await layer.receive("member"))[1] == {"n": 2}  # sent after the add
        worker.stop()


async def test_a_failed_posted_send_is_raised_by_the_next_call(until: Until) -> None:
    seen: list[BaseException] = []

    def consumer(message: Message) -> None:
        Channel("small").send({"n": 1})
        Channel("small").send({"n": 2})  # full: its failure shows at the next call
        try:
            Group("g").add("small")
        except ChannelFull as exc:
            seen.append(exc)
        Channel("other").send({"after": True})  # the consumer carries on normally

    options = LayerOptions(channel_capacity={"small": 1})
    async with MemoryLayer(options) as layer, trio.open_nursery() as nursery:
        worker = await nursery.start(
            lambda task_status: run_workers(
                layer, [route("in", consumer)], threads=1, task_status=task_status
            )
        )
        await layer.send("in", {})
        await until(lambda: worker.stats.handled == 1)
        assert len(seen) == 1
        assert (await layer.receive("other"))[1] == {"after": True}
        assert (await layer.receive("small"))[1] == {"n": 1}
        assert (await layer.receive_nowait("small")) is None
        assert worker.stats.failed == 0
        worker.stop()


async def test_a_failed_last_send_fails_the_consumer(
    until: Until, caplog: pytest.LogCaptureFixture
) -> None:
    def consumer(message: Message) -> None:
        Channel("small").send({"n": 1})
        Channel("small").send({"n": 2})  # full, and the consumer returns at once

    options = LayerOptions(channel_capacity={"small": 1})
    with caplog.at_level(logging.ERROR, logger="csp_bus.worker"):
        async with MemoryLayer(options) as layer, trio.open_nursery() as nursery:
            worker = await nursery.start(
                lambda task_status: run_workers(
                    layer, [route("in", consumer)], threads=1, task_status=task_status
                )
            )
            await layer.send("in", {})
            await until(lambda: worker.stats.failed == 1)
            assert worker.stats.handled == 0
            worker.stop()
    assert any(
        record.exc_info and isinstance(record.exc_info[1], ChannelFull) for record in caplog.records
    )


async def test_sends_of_a_blocked_consumer_are_delivered_before_it_returns(
    layer: MemoryLayer,
) -> None:
    """Posting is not batching until return: a consumer that sends, then waits, has
    its message delivered while it waits."""
    release = threading.Event()

    def consumer(message: Message) -> None:
        Channel("progress").send({"started": True})
        assert release.wait(10)

    async with trio.open_nursery() as nursery:
        worker = await nursery.start(
            lambda task_status: run_workers(
                layer, [route("in", consumer)], threads=1, task_status=task_status
            )
        )
        await layer.send("in", {})
        with trio.fail_after(5):
            assert (await layer.receive("progress"))[1] == {"started": True}
        assert worker.stats.running == 1
        release.set()
        worker.stop()


async def test_a_posted_send_wait_waits_for_room_and_holds_the_lane(layer: MemoryLayer) -> None:
    """send_wait_posted: the consumer returns at once, the lane task waits for room
    (the message is not lost to ChannelFull) and takes no new message meanwhile."""
    returned = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def consumer(message: Message) -> None:
        bus = current_context().sync  # type: ignore[union-attr]
        bus.send_wait_posted("small", {"n": message.content["n"]}, timeout=10)
        token.run_sync_soon(returned.set)

    options = LayerOptions(channel_capacity={"small": 1})
    async with MemoryLayer(options) as small, trio.open_nursery() as nursery:
        worker = await nursery.start(
            lambda task_status: run_workers(
                small, [route("in", consumer)], threads=1, task_status=task_status
            )
        )
        await small.send("small", {"n": 0})  # full: the consumer's send must wait
        await small.send("in", {"n": 1})
        await small.send("in", {"n": 2})
        with trio.fail_after(5):
            await returned.wait()
        await trio.sleep(0.1)
        # The consumer returned, but its send still waits: the lane is busy.
        assert worker.stats.handled == 0
        assert (await small.receive_nowait("in")) is not None  # message 2 not taken
        assert (await small.receive("small"))[1] == {"n": 0}
        with trio.fail_after(5):
            assert (await small.receive("small"))[1] == {"n": 1}
        assert worker.stats.handled == 1
        worker.stop()


async def test_a_failed_posted_send_wait_fails_the_consumer(until: Until) -> None:
    def consumer(message: Message) -> None:
        bus = current_context().sync  # type: ignore[union-attr]
        bus.send_wait_posted("small", {"n": 1}, timeout=0.05)

    options = LayerOptions(channel_capacity={"small": 1})
    async with MemoryLayer(options) as small, trio.open_nursery() as nursery:
        worker = await nursery.start(
            lambda task_status: run_workers(
                small, [route("in", consumer)], threads=1, task_status=task_status
            )
        )
        await small.send("small", {"n": 0})
        await small.send("in", {})
        await until(lambda: worker.stats.failed == 1)
        worker.stop()


def test_send_wait_posted_outside_a_worker_is_send_wait() -> None:
    from csp_bus import sync

    with sync.connect("memory://?capacity=1") as bus:
        bus.send_wait_posted("c", {"n": 1}, timeout=1)
        assert bus.receive("c", timeout=1) == ("c", {"n": 1})
        bus.send("c", {"n": 2})
        with pytest.raises(ChannelFull):
            bus.send_wait_posted("c", {"n": 3}, timeout=0.05)


async def test_many_consumers_on_shared_threads_each_keep_their_order(
    layer: MemoryLayer, until: Until
) -> None:
    """The pool's threads take jobs from one queue and their wake-ups of the lane tasks
    are coalesced: with many messages in flight, every consumer's posted sends and
    blocking calls still run in its own order, and none is lost."""
    threads_seen: set[str] = set()

    def consumer(message: Message) -> None:
        threads_seen.add(threading.current_thread().name)
        reply = message.reply_channel
        assert reply is not None
        reply.send({"n": 1})
        Group(f"g-{message['i']}").add(reply.name)  # blocking
        reply.send({"n": 2})
        Group(f"g-{message['i']}").send({"n": 3})
        reply.send({"n": 4})

    count = 200
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(
            lambda task_status: run_workers(
                layer, [route("in", consumer)], threads=4, task_status=task_status
            )
        )
        replies = [await layer.new_channel("reply?") for _ in range(count)]
        for i, reply in enumerate(replies):
            await layer.send_wait("in", {"i": i, "reply_channel": reply}, timeout=10)
        await until(lambda: worker.stats.handled == count)
        for reply in replies:
            assert [(await layer.receive(reply))[1]["n"] for _ in range(4)] == [1, 2, 3, 4]
        assert worker.stats.failed == 0
        assert len(threads_seen) <= 4
        worker.stop()
