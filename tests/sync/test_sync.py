"""The blocking facade: plain scripts, worker threads of a Trio program, errors."""

from __future__ import annotations

import threading

import pytest
import trio

from csp_bus import ChannelFull, InvalidLayerURL, LayerClosed, UsageError, open_layer, sync


def test_plain_script_round_trip() -> None:
    with sync.connect("memory://") as bus:
        bus.send("jobs", {"n": 1, "blob": b"\x00\xff"})
        assert bus.receive("jobs", timeout=1) == ("jobs", {"n": 1, "blob": b"\x00\xff"})
        assert bus.receive("jobs", timeout=0.01) is None
        assert bus.receive_nowait("jobs") is None


def test_plain_script_groups_and_stats() -> None:
    with sync.connect("memory://?capacity=1") as bus:
        reply = bus.new_channel("client!")
        assert reply.startswith("client!")
        bus.group_add("room", reply)
        bus.send_group("room", {"text": "hi"})
        bus.send_group("room", {"text": "dropped: the member is full"})
        assert bus.receive("client!", timeout=1) == (reply, {"text": "hi"})
        stats = bus.stats()
        assert stats["groups"] == {"room": 1}
        assert stats["messages_dropped"] == 1
        with pytest.raises(ChannelFull):
            bus.send("x", {})
            bus.send("x", {})
        with pytest.raises(ChannelFull):
            bus.send_wait("x", {}, timeout=0.05)
        bus.flush()
        assert bus.stats()["messages_pending"] == 0


def test_errors_reach_the_caller() -> None:
    with pytest.raises(InvalidLayerURL, match="accepted schemes"), sync.connect("nosuch://"):
        pass
    with (
        pytest.raises(InvalidLayerURL, match="accepted parameters"),
        sync.connect("memory://?capacty=3"),
    ):
        pass


def test_default_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSP_BUS_LAYER", "memory://?capacity=7")
    assert sync.default_url() == "memory://?capacity=7"
    with sync.connect() as bus:
        assert bus.stats("a")["capacity"] == 7
    monkeypatch.delenv("CSP_BUS_LAYER")
    assert sync.default_url() == "memory://"


async def test_worker_thread_reaches_the_same_layer_instance() -> None:
    async with open_layer("memory://") as layer:

        def consumer() -> tuple[str, dict[str, object]] | None:
            with sync.connect("memory://") as bus:
                assert bus.layer is layer
                bus.send("to-trio", {"from": "thread"})
                return bus.receive("to-thread", timeout=5)

        async with trio.open_nursery() as nursery:

            async def answer() -> None:
                _channel, message = await layer.receive("to-trio")
                assert message == {"from": "thread"}
                await layer.send("to-thread", {"from": "trio"})

            nursery.start_soon(answer)
            result = await trio.to_thread.run_sync(consumer)
        assert result == ("to-thread", {"from": "trio"})


async def test_bind_from_many_threads() -> None:
    async with open_layer("memory://?capacity=1000") as layer:
        bus = sync.bind(layer)

        def produce(start: int) -> None:
            for n in range(start, start + 50):
                bus.send("numbers", {"n": n})

        async with trio.open_nursery() as nursery:
            for start in range(0, 200, 50):
                nursery.start_soon(trio.to_thread.run_sync, produce, start)
        seen = []
        while (found := await layer.receive_nowait("numbers")) is not None:
            seen.append(found[1]["n"])
        assert sorted(seen) == list(range(200))


async def test_blocking_call_on_the_trio_thread_is_refused() -> None:
    async with open_layer("memory://") as layer:
        bus = sync.bind(layer)
        with pytest.raises(UsageError, match="cannot run on the Trio thread"):
            bus.send("x", {})


def test_layer_closed_when_the_trio_program_ended() -> None:
    holder: list[sync.SyncLayer] = []

    async def program() -> None:
        async with open_layer("memory://") as layer:
            holder.append(sync.bind(layer))

    trio.run(program)
    with pytest.raises(LayerClosed):
        holder[0].send("x", {})


def test_receive_timeout_in_thread_does_not_lose_messages() -> None:
    """A receive that timed out took nothing: the next one gets the message."""
    with sync.connect("memory://") as bus:
        assert bus.receive("late", timeout=0.01) is None
        sender = threading.Timer(0.02, bus.send, args=("late", {"n": 1}))
        sender.start()
        assert bus.receive("late", timeout=5) == ("late", {"n": 1})
        sender.join()


async def test_options_in_the_url_do_not_hide_the_open_layer() -> None:
    """Regression: connect("memory://") from a thread must find a layer opened as
    memory://?capacity=5 (options shape the layer, they do not name another bus)."""
    async with open_layer("memory://?capacity=5&expiry=30") as layer:

        def thread() -> bool:
            with sync.connect("memory://") as bus:
                return bus.layer is layer

        assert await trio.to_thread.run_sync(thread)
