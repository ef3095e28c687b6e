"""send and receive (DESIGN.md section 3, "Operations"): FIFO per channel, fairness across
channels, receive on many channels, at-most-once delivery, capacity, process-local
channels."""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from csp_bus import ChannelFull, ChannelLayer


async def test_send_then_receive(layer: ChannelLayer) -> None:
    await layer.send("chat", {"text": "hi"})
    result = await layer.receive("chat")
    assert result == ("chat", {"text": "hi"})
    assert type(result) is tuple


async def test_fifo_per_channel(layer: ChannelLayer) -> None:
    for n in range(50):
        await layer.send("ordered", {"n": n})
    assert [(await layer.receive("ordered"))[1]["n"] for _ in range(50)] == list(range(50))


async def test_fifo_per_channel_when_receiving_several(layer: ChannelLayer) -> None:
    for n in range(30):
        await layer.send(f"c{n % 3}", {"n": n})
    seen: dict[str, list[int]] = {"c0": [], "c1": [], "c2": []}
    for _ in range(30):
        channel, message = await layer.receive("c0", "c1", "c2")
        seen[channel].append(message["n"])
    assert seen == {f"c{k}": list(range(k, 30, 3)) for k in range(3)}


async def test_receive_nowait_returns_none_when_empty(layer: ChannelLayer) -> None:
    assert await layer.receive_nowait("empty") is None
    assert await layer.receive_nowait("empty", "also-empty", "p!") is None
    await layer.send("full", {"n": 1})
    assert await layer.receive_nowait("empty", "full") == ("full", {"n": 1})
    assert await layer.receive_nowait("empty", "full") is None


async def test_receive_waits_until_another_task_sends(layer: ChannelLayer) -> None:
    got: list[tuple[str, dict[str, Any]]] = []

    async def receiver() -> None:
        got.append(await layer.receive("later", "never"))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.05)  # a layer with a network round trip is waiting too
            assert got == []
            await layer.send("later", {"n": 1})
    assert got == [("later", {"n": 1})]


async def test_waiting_receiver_on_process_local_prefix(layer: ChannelLayer) -> None:
    got: list[tuple[str, dict[str, Any]]] = []

    async def receiver() -> None:
        got.append(await layer.receive("other", "reply!"))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.05)
            await layer.send("reply!conn7", {"n": 1})
    assert got == [("reply!conn7", {"n": 1})]


# -- fairness ------------------------------------------------------------------------------
# "A busy channel never starves a quiet one": when several listed channels have messages,
# each is served at least once in every len(channels) receives. (Least-recently-served,
# round-robin and rotating key order all meet this bound.)


@pytest.mark.parametrize("quiet_first", [False, True], ids=["busy-first", "quiet-first"])
async def test_busy_channel_does_not_starve_a_quiet_one(make_layer: Any, quiet_first: bool) -> None:
    layer = await make_layer(capacity=100)
    for n in range(100):
        await layer.send("busy", {"n": n})
    # The consumer has been draining the busy channel for a while...
    for _ in range(10):
        assert (await layer.receive("busy", "quiet"))[0] == "busy"
    await layer.send("quiet", {"n": "q"})
    channels = ("quiet", "busy") if quiet_first else ("busy", "quiet")
    order = [(await layer.receive(*channels))[0] for _ in range(2)]
    assert "quiet" in order


@pytest.mark.parametrize("busy_count", [9, 40])
async def test_quiet_channel_among_many_busy_ones(make_layer: Any, busy_count: int) -> None:
    layer = await make_layer(capacity=50)
    busy = [f"busy{k}" for k in range(busy_count)]
    for n in range(50):
        for channel in busy:
            await layer.send(channel, {"n": n})
    for _ in range(busy_count * 2 + 3):
        await layer.receive(*busy, "quiet")
    await layer.send("quiet", {})
    order = [(await layer.receive(*busy, "quiet"))[0] for _ in range(busy_count + 1)]
    assert "quiet" in order
    # ...and the busy ones are served in turn too: none served twice before another once.
    counts = Counter(order)
    assert max(counts.values()) <= 2


async def test_fairness_under_a_continuous_producer(make_layer: Any) -> None:
    """A producer keeps the busy channel full while quiet messages arrive now and then:
    every quiet message is received within 2 receives of being sent."""
    layer = await make_layer(capacity=20)
    for n in range(20):
        await layer.send("busy", {"n": n})
    waited: list[int] = []
    pending_since: int | None = None
    for step in range(300):
        with contextlib.suppress(ChannelFull):
            await layer.send("busy", {"n": step})
        if step % 7 == 0 and pending_since is None:
            await layer.send("quiet", {"step": step})
            pending_since = step
        channel, _ = await layer.receive("busy", "quiet")
        if channel == "quiet":
            assert pending_since is not None
            waited.append(step - pending_since + 1)
            pending_since = None
    assert len(waited) >= 40
    assert max(waited) <= 2


async def test_fair_between_process_local_prefix_and_plain_channel(make_layer: Any) -> None:
    layer = await make_layer(capacity=50)
    for n in range(50):
        await layer.send("p!busy", {"n": n})
    for _ in range(5):
        await layer.receive("p!", "plain")
    await layer.send("plain", {})
    order = [(await layer.receive("p!", "plain"))[0] for _ in range(2)]
    assert "plain" in order


# -- many channels ---------------------------------------------------------------------------


async def test_receive_on_a_thousand_channels_at_once(layer: ChannelLayer) -> None:
    channels = [f"many.{k}" for k in range(1000)]
    got: list[tuple[str, dict[str, Any]]] = []

    async def receiver() -> None:
        got.append(await layer.receive(*channels))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.05)
            await layer.send("many.999", {"last": True})
    assert got == [("many.999", {"last": True})]
    # And when messages are already waiting: one per channel, each exactly once.
    for k in range(0, 1000, 10):
        await layer.send(channels[k], {"k": k})
    received = [await layer.receive(*channels) for _ in range(100)]
    assert sorted(message["k"] for _, message in received) == list(range(0, 1000, 10))
    assert all(channel == f"many.{message['k']}" for channel, message in received)
    assert await layer.receive_nowait(*channels) is None


async def test_many_receivers_on_many_channels(layer: ChannelLayer) -> None:
    channels = [f"wide.{k}" for k in range(200)]
    got: list[int] = []

    async def receiver() -> None:
        got.append((await layer.receive(*channels))[1]["k"])

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.05)
            for k in range(50):
                await layer.send(channels[k * 4], {"k": k})
    assert sorted(got) == list(range(50))


async def test_duplicate_channels_in_one_receive(layer: ChannelLayer) -> None:
    await layer.send("dup", {"n": 1})
    assert await layer.receive("dup", "dup", "dup") == ("dup", {"n": 1})
    assert await layer.receive_nowait("dup", "dup") is None


# -- at-most-once ----------------------------------------------------------------------------


async def test_two_receivers_never_get_the_same_message(layer: ChannelLayer) -> None:
    total = 300
    got: list[int] = []
    all_in = trio.Event()

    async def receiver(channels: tuple[str, ...]) -> None:
        while True:
            got.append((await layer.receive(*channels))[1]["n"])
            if len(got) == total:
                all_in.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for k in range(10):
                channels = ("work",) if k % 2 else ("work", "other")
                nursery.start_soon(receiver, channels)
            await trio.testing.wait_all_tasks_blocked()
            for n in range(total):
                await layer.send_wait("work", {"n": n}, timeout=5)
                if n % 10 == 0:
                    await trio.lowlevel.checkpoint()
            await all_in.wait()
            nursery.cancel_scope.cancel()
    assert sorted(got) == list(range(total))


async def test_receivers_racing_for_a_backlog(layer: ChannelLayer) -> None:
    for n in range(100):
        await layer.send("backlog", {"n": n})
    got: list[int] = []

    async def receiver() -> None:
        while (found := await layer.receive_nowait("backlog")) is not None:
            got.append(found[1]["n"])
            await trio.lowlevel.checkpoint()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(receiver)
    assert sorted(got) == list(range(100))


# -- capacity --------------------------------------------------------------------------------


async def test_channel_full_at_capacity(make_layer: Any) -> None:
    layer = await make_layer(capacity=3)
    for n in range(3):
        await layer.send("cap", {"n": n})
    with pytest.raises(ChannelFull) as info:
        await layer.send("cap", {"n": 3})
    assert info.value.channel == "cap"
    assert info.value.capacity == 3
    assert "'cap'" in str(info.value)
    # Other channels are not affected; room comes back after a receive.
    await layer.send("other", {})
    assert (await layer.receive("cap"))[1] == {"n": 0}
    await layer.send("cap", {"n": 4})
    assert [(await layer.receive("cap"))[1]["n"] for _ in range(3)] == [1, 2, 4]


async def test_default_capacity_is_100(layer: ChannelLayer) -> None:
    for n in range(100):
        await layer.send("hundred", {"n": n})
    with pytest.raises(ChannelFull) as info:
        await layer.send("hundred", {})
    assert info.value.capacity == 100


async def test_capacity_under_concurrent_senders(make_layer: Any) -> None:
    layer = await make_layer(capacity=5)
    start = trio.Event()
    outcomes: list[str] = []

    async def sender(n: int) -> None:
        await start.wait()
        try:
            await layer.send("contended", {"n": n})
        except ChannelFull:
            outcomes.append("full")
        else:
            outcomes.append("sent")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for n in range(40):
                nursery.start_soon(sender, n)
            await trio.testing.wait_all_tasks_blocked()
            start.set()
    assert Counter(outcomes) == {"sent": 5, "full": 35}
    received = []
    while (found := await layer.receive_nowait("contended")) is not None:
        received.append(found)
    assert len(received) == 5


async def test_channel_capacity_per_pattern(make_layer: Any) -> None:
    layer = await make_layer(
        capacity=4, channel_capacity="http.request:2,websocket.send*:1,reply!:3"
    )
    expected = {
        "http.request": 2,  # exact pattern
        "http.request.body": 4,  # an exact pattern is not a prefix
        "websocket.send": 1,  # glob
        "websocket.send.abc": 1,
        "websocket.receive": 4,  # default
        "other": 4,
    }
    for channel, capacity in expected.items():
        for n in range(capacity):
            await layer.send(channel, {"n": n})
        with pytest.raises(ChannelFull) as info:
            await layer.send(channel, {})
        assert info.value.capacity == capacity, channel
    # A process-local pattern applies to the prefix, shared by all its channels.
    for name in ["reply!a", "reply!b", "reply!c"]:
        await layer.send(name, {})
    with pytest.raises(ChannelFull) as info:
        await layer.send("reply!d", {})
    assert info.value.capacity == 3


async def test_process_local_capacity_counts_on_the_prefix(make_layer: Any) -> None:
    layer = await make_layer(capacity=3)
    await layer.send("p!a", {"n": 1})
    await layer.send("p!b", {"n": 2})
    await layer.send("p!a", {"n": 3})
    with pytest.raises(ChannelFull):
        await layer.send("p!c", {"n": 4})
    # Another prefix has its own room.
    await layer.send("q!a", {})
    await layer.receive("p!")
    await layer.send("p!c", {"n": 5})


# -- process-local channels ------------------------------------------------------------------


async def test_prefix_receive_returns_full_names(layer: ChannelLayer) -> None:
    await layer.send("p!a", {"to": "a"})
    await layer.send("p!b", {"to": "b"})
    await layer.send("p!a", {"to": "a2"})
    await layer.send("px!a", {"to": "other prefix"})
    got = [await layer.receive("p!") for _ in range(3)]
    assert sorted(got, key=lambda item: item[1]["to"]) == [
        ("p!a", {"to": "a"}),
        ("p!a", {"to": "a2"}),
        ("p!b", {"to": "b"}),
    ]
    # FIFO per full name.
    assert [m["to"] for c, m in got if c == "p!a"] == ["a", "a2"]
    assert await layer.receive_nowait("p!") is None
    assert await layer.receive("px!") == ("px!a", {"to": "other prefix"})


async def test_prefix_is_distinct_from_plain_channel_of_same_stem(layer: ChannelLayer) -> None:
    await layer.send("stem", {"plain": True})
    await layer.send("stem!x", {"local": True})
    assert await layer.receive("stem!") == ("stem!x", {"local": True})
    assert await layer.receive("stem") == ("stem", {"plain": True})
