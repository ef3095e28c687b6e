"""The worker: dispatch to threads, bounded receiving, containment, ConsumeLater, stop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest
import trio
import trio.testing

from csp_bus.consumers import Channel, ConsumeLater, Group, Message
from csp_bus.embedded import run_workers
from csp_bus.errors import UsageError
from csp_bus.layers.memory import MemoryLayer
from csp_bus.routing import route
from csp_bus.worker import Worker, select_channels


async def until(condition: Callable[[], bool]) -> None:
    """Wait (at most 5 s) until ``condition()``: counters that worker threads update have
    no event to wait on, so this test helper polls."""
    with trio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - see the docstring
            await trio.sleep(0.002)


async def receive(layer: MemoryLayer, channel: str) -> dict:
    with trio.fail_after(5):
        return (await layer.receive(channel))[1]


async def test_send_consumer_reply_in_a_thread(layer: MemoryLayer) -> None:
    seen: list[str] = []

    def echo(message: Message, word: str) -> None:
        seen.append(threading.current_thread().name)
        assert message.channel == "test.in"
        assert message["text"] == "hello"
        message.reply_channel.send({"echo": word})

    async with trio.open_nursery() as nursery:
        worker = await nursery.start(
            run_workers, layer, [route("test.in", echo, text=r"^(?P<word>\w+)$")]
        )
        reply = await layer.new_channel("reply?")
        await layer.send("test.in", {"text": "hello", "reply_channel": reply})
        assert await receive(layer, reply) == {"echo": "hello"}
        worker.stop()
    assert seen and seen[0].startswith("csp-bus-worker-")
    assert worker.stats.handled == 1


async def test_sleeping_consumer_does_not_block_other_threads(layer: MemoryLayer) -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(message: Message) -> None:
        started.set()
        assert release.wait(10)
        message.reply_channel.send({"slow": True})

    def fast(message: Message) -> None:
        message.reply_channel.send({"fast": message["n"]})

    reply = await layer.new_channel("reply?")
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(
            lambda task_status: run_workers(
                layer,
                [route("slow", slow), route("fast", fast)],
                threads=2,
                task_status=task_status,
            )
        )
        await layer.send("slow", {"reply_channel": reply})
        await trio.to_thread.run_sync(started.wait, 10)
        for n in range(5):
            await layer.send("fast", {"n": n, "reply_channel": reply})
        # Every fast message is handled by the second thread while the first sleeps.
        assert [await receive(layer, reply) for _ in range(5)] == [{"fast": n} for n in range(5)]
        release.set()
        assert await receive(layer, reply) == {"slow": True}
        worker.stop()


async def test_busy_worker_stops_receiving(layer: MemoryLayer) -> None:
    """No unbounded buffering: with every thread busy the messages stay on the layer."""
    release = threading.Event()

    def blocked(message: Message) -> None:
        assert release.wait(10)

    async with trio.open_nursery() as nursery:
        worker = await nursery.start(
            lambda task_status: run_workers(
                layer, [route("jobs", blocked)], threads=2, task_status=task_status
            )
        )
        for n in range(10):
            await layer.send("jobs", {"n": n})
        await until(lambda: worker.stats.running >= 2)
        await trio.sleep(0.05)
        assert worker.stats.received == 2
        assert (await layer.stats("jobs"))["messages_pending"] == 8
        release.set()
        await until(lambda: worker.stats.handled >= 10)
        worker.stop()


async def test_exceptions_are_logged_and_contained(
    layer: MemoryLayer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(message: Message) -> None:
        raise RuntimeError(f"boom {message['n']}")

    async def broken_async(message: Message) -> None:
        raise ValueError("async boom")

    def fine(message: Message) -> None:
        message.reply_channel.send({"ok": True})

    reply = await layer.new_channel("reply?")
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(
            run_workers,
            layer,
            [route("bad", broken), route("bad.async", broken_async), route("good", fine)],
        )
        with caplog.at_level(logging.ERROR, logger="csp_bus.worker"):
            for n in range(3):
                await layer.send("bad", {"n": n, "reply_channel": reply})
            await layer.send("bad.async", {})
            await layer.send("good", {"reply_channel": reply})
            assert await receive(layer, reply) == {"ok": True}
            await until(lambda: worker.stats.failed >= 4)
        worker.stop()
    failures = [r for r in caplog.records if "consumer failed" in r.getMessage()]
    assert len(failures) == 4
    sync_failure = next(r for r in failures if "channel 'bad'" in r.getMessage())
    assert "route(" in sync_failure.getMessage() and "broken" in sync_failure.getMessage()
    assert sync_failure.exc_info is not None and "boom" in str(sync_failure.exc_info[1])
    assert any("async boom" in str(r.exc_info[1]) for r in failures if r.exc_info)


async def test_unmatched_messages_are_logged_once_per_channel(
    layer: MemoryLayer, caplog: pytest.LogCaptureFixture
) -> None:
    def chat(message: Message) -> None:
        pass

    async with trio.open_nursery() as nursery:
        worker = await nursery.start(
            run_workers, layer, [route("websocket.receive", chat, path=r"^/chat/$")]
        )
        with caplog.at_level(logging.WARNING, logger="csp_bus.worker"):
            for _ in range(3):
                await layer.send("websocket.receive", {"path": "/nope/"})
            await until(lambda: worker.stats.unmatched >= 3)
        worker.stop()
    warnings = [r for r in caplog.records if "no route matches" in r.getMessage()]
    assert len(warnings) == 1
    assert "websocket.receive" in warnings[0].getMessage()


async def test_consume_later_requeues_then_succeeds(layer: MemoryLayer) -> None:
    attempts: list[int] = []

    def flaky(message: Message) -> None:
        attempts.append(message.get("__retries__", 0))
        if len(attempts) < 3:
            raise ConsumeLater("not yet")
        message.reply_channel.send({"done": len(attempts)})

    reply = await layer.new_channel("reply?")
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(run_workers, layer, [route("flaky", flaky)])
        await layer.send("flaky", {"reply_channel": reply})
        assert await receive(layer, reply) == {"done": 3}
        worker.stop()
    assert attempts == [0, 1, 2]
    assert worker.stats.requeued == 2


async def test_consume_later_retries_are_bounded(
    layer: MemoryLayer, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    calls: list[int] = []

    def never(message: Message) -> None:
        calls.append(1)
        raise ConsumeLater

    async with trio.open_nursery() as nursery:
        worker = await nursery.start(
            lambda task_status: run_workers(
                layer, [route("never", never)], message_retries=3, task_status=task_status
            )
        )
        with caplog.at_level(logging.WARNING, logger="csp_bus.worker"):
            await layer.send("never", {})
            await until(lambda: worker.stats.dropped >= 1)
        worker.stop()
    assert len(calls) == 4  # the first try and three retries
    assert any("after 3 ConsumeLater retries" in r.getMessage() for r in caplog.records)


async def test_async_consumer_runs_on_the_trio_loop(layer: MemoryLayer) -> None:
    async def consumer(message: Message) -> None:
        trio.lowlevel.current_trio_token()  # raises outside the Trio thread
        with pytest.raises(UsageError, match="awaitable"):
            message.reply_channel.send({"blocking": "refused"})
        await message.reply_channel.asend({"async": True})
        await Group("g").aadd(message.reply_channel)
        await Group("g").asend({"group": True})
        await Group("g").adiscard(message.reply_channel)

    reply = await layer.new_channel("reply?")
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(run_workers, layer, [route("a", consumer)])
        await layer.send("a", {"reply_channel": reply})
        assert await receive(layer, reply) == {"async": True}
        assert await receive(layer, reply) == {"group": True}
        worker.stop()


async def test_channel_and_group_from_sync_consumers(layer: MemoryLayer) -> None:
    def join(message: Message, room: str) -> None:
        Group(f"room-{room}").add(message.reply_channel)
        message.reply_channel.send({"joined": room})

    def say(message: Message, room: str) -> None:
        Group(f"room-{room}").send({"text": message["text"]})
        Channel("audit").send({"room": room})

    def leave(message: Message, room: str) -> None:
        Group(f"room-{room}").discard(message.reply_channel)

    a, b = await layer.new_channel("a?"), await layer.new_channel("b?")
    room = {"path": "/r/lobby/"}
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(
            run_workers,
            layer,
            [
                route("join", join, path=r"^/r/(?P<room>\w+)/$"),
                route("say", say, path=r"^/r/(?P<room>\w+)/$"),
                route("leave", leave, path=r"^/r/(?P<room>\w+)/$"),
            ],
        )
        for reply in (a, b):
            await layer.send("join", {**room, "reply_channel": reply})
            assert await receive(layer, reply) == {"joined": "lobby"}
        await layer.send("say", {**room, "text": "hi"})
        assert await receive(layer, a) == {"text": "hi"}
        assert await receive(layer, b) == {"text": "hi"}
        assert await receive(layer, "audit") == {"room": "lobby"}
        await layer.send("leave", {**room, "reply_channel": b})
        await until(lambda: worker.stats.handled >= 4)
        assert (await layer.stats())["groups"] == {"room-lobby": 1}
        worker.stop()


async def test_graceful_stop_finishes_in_flight_consumers(layer: MemoryLayer) -> None:
    started = threading.Event()
    finished: list[int] = []

    def slow(message: Message) -> None:
        started.set()
        threading.Event().wait(0.3)
        finished.append(message["n"])
        Channel("done").send({"n": message["n"]})

    async with trio.open_nursery() as nursery:
        worker = await nursery.start(
            lambda task_status: run_workers(
                layer, [route("jobs", slow)], threads=1, grace_period=10, task_status=task_status
            )
        )
        for n in range(3):
            await layer.send("jobs", {"n": n})
        await trio.to_thread.run_sync(started.wait, 10)
        worker.stop()
    # run_workers returned only after the running consumer finished (and could still send).
    assert finished == [0]
    assert await receive(layer, "done") == {"n": 0}
    # The messages it never started stay on the layer for another worker.
    assert (await layer.stats("jobs"))["messages_pending"] == 2


async def test_grace_period_expiry_abandons_stuck_consumers(
    layer: MemoryLayer, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    started = threading.Event()

    def stuck(message: Message) -> None:
        started.set()
        release.wait(10)

    try:
        with caplog.at_level(logging.WARNING, logger="csp_bus.worker"), trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                worker = await nursery.start(
                    lambda task_status: run_workers(
                        layer, [route("jobs", stuck)], grace_period=0.1, task_status=task_status
                    )
                )
                await layer.send("jobs", {})
                await trio.to_thread.run_sync(started.wait, 10)
                worker.stop()
        assert worker.stats.abandoned == 1
        assert any("abandoned" in r.getMessage() for r in caplog.records)
    finally:
        release.set()


async def test_second_stop_does_not_wait(layer: MemoryLayer) -> None:
    release = threading.Event()
    started = threading.Event()

    def stuck(message: Message) -> None:
        started.set()
        release.wait(10)

    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                worker = await nursery.start(
                    lambda task_status: run_workers(
                        layer, [route("jobs", stuck)], grace_period=60, task_status=task_status
                    )
                )
                await layer.send("jobs", {})
                await trio.to_thread.run_sync(started.wait, 10)
                worker.stop()
                await trio.sleep(0.05)
                worker.stop()
        assert worker.stats.abandoned == 1
    finally:
        release.set()


async def test_channel_selection_globs(layer: MemoryLayer) -> None:
    def c(message: Message) -> None:
        pass

    routes = [
        route("http.request", c),
        route("websocket.connect", c),
        route("websocket.receive", c),
    ]
    assert select_channels({"a.x", "a.y", "b.x"}, ["a.*"], ["*.y"]) == ("a.x",)
    worker = Worker(layer, routes, only_channels=["websocket.*"], exclude_channels=["*.receive"])
    assert worker.channels == ("websocket.connect",)
    with pytest.raises(UsageError, match="no channel left"):
        Worker(layer, routes, only_channels=["email.*"])
    with pytest.raises(UsageError, match="threads"):
        Worker(layer, routes, threads=0)


async def test_stop_before_run_returns_at_once(layer: MemoryLayer) -> None:
    def c(message: Message) -> None:
        pass

    worker = Worker(layer, [route("x", c)])
    worker.stop()
    with trio.fail_after(2):
        await worker.run()


async def test_a_hidden_async_consumer_is_reported(
    layer: MemoryLayer, caplog: pytest.LogCaptureFixture
) -> None:
    class Handler:
        async def __call__(self, message: Message) -> None:
            raise AssertionError("never awaited")

    async with trio.open_nursery() as nursery:
        worker = await nursery.start(run_workers, layer, [route("x", Handler())])
        with caplog.at_level(logging.ERROR, logger="csp_bus.worker"):
            await layer.send("x", {})
            await until(lambda: worker.stats.failed >= 1)
        worker.stop()
    assert any("returned a coroutine" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


async def test_failure_logs_are_rate_limited_per_route(
    layer: MemoryLayer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import csp_bus.worker

    monkeypatch.setattr(csp_bus.worker, "_FAILURE_WINDOW", 2.0)  # the real one is 60 s

    def broken(message: Message) -> None:
        raise RuntimeError("again")

    async with trio.open_nursery() as nursery:
        worker = await nursery.start(run_workers, layer, [route("bad", broken)])
        with caplog.at_level(logging.ERROR, logger="csp_bus.worker"):
            for _ in range(25):
                await layer.send("bad", {})
            await until(lambda: worker.stats.failed >= 25)
            await trio.sleep(2.1)
            await layer.send("bad", {})
            await until(lambda: worker.stats.failed >= 26)
        worker.stop()
    tracebacks = [r for r in caplog.records if "consumer failed" in r.getMessage()]
    assert len(tracebacks) == 11  # 10 in the first window, 1 in the next
    assert any("15 more consumer failure(s)" in r.getMessage() for r in caplog.records)
