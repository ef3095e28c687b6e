"""flush, close, stats, and the Go-style ergonomics (send_wait, listen) of the layer
contract (``csp_bus/layers/base.py``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from csp_bus import (
    ChannelFull,
    ChannelLayer,
    InvalidChannelName,
    InvalidLayerURL,
    LayerClosed,
    open_layer,
)

# -- flush ---------------------------------------------------------------------------------


async def test_flush_clears_messages_and_groups(layer: ChannelLayer) -> None:
    await layer.send("a", {"n": 1})
    await layer.send("p!x", {"n": 1})
    await layer.group_add("room", "member")
    await layer.flush()
    assert await layer.receive_nowait("a", "p!") is None
    await layer.send_group("room", {"n": 2})
    assert await layer.receive_nowait("member") is None
    stats = await layer.stats()
    assert stats["messages_pending"] == 0
    assert stats["groups"] == {}
    assert stats["channels"] == {}


async def test_flush_frees_capacity(make_layer: Any) -> None:
    layer = await make_layer(capacity=1)
    await layer.send("one", {})
    await layer.flush()
    await layer.send("one", {"after": True})
    assert await layer.receive_nowait("one") == ("one", {"after": True})


async def test_layer_works_after_flush_with_a_waiting_receiver(layer: ChannelLayer) -> None:
    got: list[Any] = []

    async def receiver() -> None:
        got.append(await layer.receive("later"))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            await layer.flush()
            await layer.send("later", {"n": 1})
    assert got == [("later", {"n": 1})]


# -- close ---------------------------------------------------------------------------------

CLOSED_OPERATIONS: dict[str, Callable[[ChannelLayer], Awaitable[Any]]] = {
    "send": lambda layer: layer.send("a", {}),
    "send_wait": lambda layer: layer.send_wait("a", {}, timeout=0.1),
    "receive": lambda layer: layer.receive("a"),
    "receive_nowait": lambda layer: layer.receive_nowait("a"),
    "new_channel": lambda layer: layer.new_channel("a!"),
    "group_add": lambda layer: layer.group_add("g", "a"),
    "group_discard": lambda layer: layer.group_discard("g", "a"),
    "send_group": lambda layer: layer.send_group("g", {}),
    "flush": lambda layer: layer.flush(),
    "stats": lambda layer: layer.stats(),
    "listen": lambda layer: layer.listen("a").__anext__(),
}


@pytest.mark.parametrize("operation", CLOSED_OPERATIONS)
async def test_every_operation_raises_layer_closed_after_close(
    make_layer: Any, operation: str
) -> None:
    layer = await make_layer()
    await layer.send("a", {"left": "behind"})
    await layer.aclose()
    with trio.fail_after(5), pytest.raises(LayerClosed):
        await CLOSED_OPERATIONS[operation](layer)


async def test_close_is_idempotent_and_has_an_asgi_alias(make_layer: Any) -> None:
    layer = await make_layer()
    await layer.close()
    await layer.aclose()
    await layer.close()
    with pytest.raises(LayerClosed):
        await layer.send("a", {})


async def test_close_wakes_waiting_receivers(make_layer: Any) -> None:
    layer = await make_layer()
    outcomes: list[str] = []

    async def receiver(*channels: str) -> None:
        try:
            await layer.receive(*channels)
        except LayerClosed:
            outcomes.append("closed")

    async def listener() -> None:
        try:
            async for _ in layer.listen("l1", "l2"):
                outcomes.append("message?")
        except LayerClosed:
            outcomes.append("closed")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver, "one")
            nursery.start_soon(receiver, "p!")
            nursery.start_soon(receiver, *[f"wide{k}" for k in range(100)])
            nursery.start_soon(listener)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.05)
            await layer.aclose()
    assert outcomes == ["closed"] * 4


async def test_close_wakes_a_receiver_of_local_and_plain_channels(make_layer: Any) -> None:
    layer = await make_layer()
    outcomes: list[str] = []

    async def receiver() -> None:
        try:
            await layer.receive("p!", "two")
        except LayerClosed:
            outcomes.append("closed")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.05)
            await layer.aclose()
    assert outcomes == ["closed"]


async def test_close_wakes_a_waiting_send_wait(make_layer: Any) -> None:
    layer = await make_layer(capacity=1)
    await layer.send("full", {})
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def sender() -> None:
                with pytest.raises(LayerClosed):
                    await layer.send_wait("full", {}, timeout=30)

            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.05)
            await layer.aclose()


async def test_open_layer_closes_on_exit(layer_url: str) -> None:
    async with open_layer(layer_url) as layer:
        await layer.send("x", {})
        assert await layer.receive_nowait("x") == ("x", {})
    with pytest.raises(LayerClosed):
        await layer.send("x", {})


async def test_open_layer_closes_when_its_body_raises(layer_url: str) -> None:
    with pytest.raises(KeyError):
        async with open_layer(layer_url) as layer:
            raise KeyError("boom")
    with pytest.raises(LayerClosed):
        await layer.receive_nowait("x")


async def test_open_is_idempotent(layer: ChannelLayer) -> None:
    await layer.open()
    await layer.open()
    await layer.send("x", {})
    assert await layer.receive_nowait("x") == ("x", {})


async def test_layer_class_serves_its_url_scheme(layer: ChannelLayer, layer_url: str) -> None:
    assert layer_url.split("://")[0] in type(layer).schemes


async def test_from_url_refuses_an_unknown_parameter(layer: ChannelLayer, layer_url: str) -> None:
    separator = "&" if "?" in layer_url else "?"
    with pytest.raises(InvalidLayerURL, match="capacity"):
        type(layer).from_url(f"{layer_url}{separator}no_such_parameter=1")


async def test_layer_advertises_the_asgi_extensions(layer: ChannelLayer) -> None:
    assert {"groups", "flush", "statistics"} <= set(layer.extensions)


# -- stats ---------------------------------------------------------------------------------


async def test_stats_figures(make_layer: Any) -> None:
    layer = await make_layer(capacity=2, channel_capacity="wide:5")
    start = await layer.stats()
    for key in [
        "messages_count",
        "messages_received",
        "messages_expired",
        "messages_dropped",
        "channel_full_count",
        "messages_pending",
        "messages_max_age",
        "channels",
        "groups",
    ]:
        assert key in start, key
    assert start["messages_pending"] == 0
    assert start["channels"] == {}

    await layer.send("a", {})
    await layer.send("a", {})
    with pytest.raises(ChannelFull):
        await layer.send("a", {})
    await layer.send("wide", {})
    await layer.send("p!x", {})
    await layer.send("p!y", {})
    await trio.sleep(0.05)
    stats = await layer.stats()
    assert stats["messages_count"] - start["messages_count"] == 5
    assert stats["channel_full_count"] - start["channel_full_count"] == 1
    assert stats["messages_pending"] == 5
    assert stats["messages_max_age"] >= 0.04
    assert set(stats["channels"]) == {"a", "wide", "p!"}
    assert stats["channels"]["a"]["messages_pending"] == 2
    assert stats["channels"]["a"]["capacity"] == 2
    assert stats["channels"]["wide"]["capacity"] == 5
    assert stats["channels"]["p!"]["messages_pending"] == 2
    assert stats["channels"]["a"]["messages_max_age"] >= 0.04

    await layer.receive("a")
    await layer.receive("p!")
    stats = await layer.stats()
    assert stats["messages_received"] - start["messages_received"] == 2
    assert stats["messages_pending"] == 3
    assert stats["channels"]["a"]["messages_pending"] == 1


async def test_stats_of_one_channel(make_layer: Any) -> None:
    layer = await make_layer(capacity=7, channel_capacity="reply!:3")
    assert await layer.stats("nothing.here") == {
        "messages_pending": 0,
        "messages_max_age": 0,
        "capacity": 7,
    }
    await layer.send("one", {})
    await layer.send("reply!a", {})
    await layer.send("reply!b", {})
    await trio.sleep(0.02)
    one = await layer.stats("one")
    assert one["messages_pending"] == 1
    assert one["capacity"] == 7
    assert one["messages_max_age"] >= 0.01
    # A process-local channel's figures are its prefix's, asked by prefix or full name.
    by_prefix = await layer.stats("reply!")
    assert by_prefix["messages_pending"] == 2
    assert by_prefix["capacity"] == 3
    by_name = await layer.stats("reply!a")
    assert by_name["messages_pending"] == 2
    assert by_name["capacity"] == 3


async def test_stats_refuses_a_bad_channel_name(layer: ChannelLayer) -> None:
    with pytest.raises(InvalidChannelName):
        await layer.stats("bad name")


async def test_stats_counts_messages_received_by_a_waiting_receiver(layer: ChannelLayer) -> None:
    start = await layer.stats()

    async def receiver() -> None:
        await layer.receive("direct")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.05)
            await layer.send("direct", {})
    stats = await layer.stats()
    assert stats["messages_count"] - start["messages_count"] == 1
    assert stats["messages_received"] - start["messages_received"] == 1
    assert stats["messages_pending"] == 0


# -- send_wait -----------------------------------------------------------------------------


async def test_send_wait_sends_at_once_when_there_is_room(layer: ChannelLayer) -> None:
    with trio.fail_after(1):
        await layer.send_wait("roomy", {"n": 1})
        await layer.send_wait("roomy", {"n": 2}, timeout=0)
    assert await layer.receive_nowait("roomy") == ("roomy", {"n": 1})


async def test_send_wait_waits_for_room_then_sends(make_layer: Any) -> None:
    layer = await make_layer(capacity=2)
    await layer.send("tight", {"n": 0})
    await layer.send("tight", {"n": 1})
    sent = trio.Event()

    async def producer() -> None:
        await layer.send_wait("tight", {"n": 2}, timeout=10)
        sent.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.05)
            assert not sent.is_set()
            assert await layer.receive("tight") == ("tight", {"n": 0})
            await sent.wait()
    assert [(await layer.receive("tight"))[1]["n"] for _ in range(2)] == [1, 2]


async def test_send_wait_raises_channel_full_after_its_timeout(make_layer: Any) -> None:
    layer = await make_layer(capacity=1)
    await layer.send("stuck", {})
    start = trio.current_time()
    with trio.fail_after(5), pytest.raises(ChannelFull) as info:
        await layer.send_wait("stuck", {"late": True}, timeout=0.2)
    elapsed = trio.current_time() - start
    assert 0.19 <= elapsed < 2
    assert info.value.channel == "stuck"
    assert await layer.receive_nowait("stuck") == ("stuck", {})
    assert await layer.receive_nowait("stuck") is None


async def test_send_wait_timeout_zero_is_a_plain_send(make_layer: Any) -> None:
    layer = await make_layer(capacity=1)
    await layer.send("stuck", {})
    with trio.fail_after(1), pytest.raises(ChannelFull):
        await layer.send_wait("stuck", {}, timeout=0)


async def test_send_wait_on_a_process_local_channel(make_layer: Any) -> None:
    layer = await make_layer(capacity=1)
    await layer.send("p!a", {"n": 1})

    async def producer() -> None:
        await layer.send_wait("p!b", {"n": 2}, timeout=10)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            await trio.testing.wait_all_tasks_blocked()
            assert await layer.receive("p!") == ("p!a", {"n": 1})
    assert await layer.receive("p!") == ("p!b", {"n": 2})


async def test_many_waiting_senders_all_get_through_in_the_end(make_layer: Any) -> None:
    layer = await make_layer(capacity=2)
    got: list[int] = []

    async def producer(n: int) -> None:
        await layer.send_wait("funnel", {"n": n}, timeout=10)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(producer, n)
            while len(got) < 20:
                got.append((await layer.receive("funnel"))[1]["n"])
    assert sorted(got) == list(range(20))


# -- listen --------------------------------------------------------------------------------


async def test_listen_iterates_over_messages(layer: ChannelLayer) -> None:
    for n in range(5):
        await layer.send("l1" if n % 2 else "l2", {"n": n})
    await layer.send("p!x", {"n": 5})
    got = []
    with trio.fail_after(5):
        async for channel, message in layer.listen("l1", "l2", "p!"):
            got.append((channel, message["n"]))
            if len(got) == 6:
                break
    assert sorted(got, key=lambda item: item[1]) == [
        ("l2", 0),
        ("l1", 1),
        ("l2", 2),
        ("l1", 3),
        ("l2", 4),
        ("p!x", 5),
    ]


async def test_listen_waits_for_later_messages(layer: ChannelLayer) -> None:
    got: list[int] = []

    async def consumer() -> None:
        async for _, message in layer.listen("stream"):
            got.append(message["n"])
            if message["n"] == 2:
                return

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            for n in range(3):
                await trio.testing.wait_all_tasks_blocked()
                await layer.send("stream", {"n": n})
    assert got == [0, 1, 2]


async def test_listen_refuses_bad_names(layer: ChannelLayer) -> None:
    with pytest.raises(InvalidChannelName):
        async for _ in layer.listen("bad name"):
            pass
