"""receive_many (csp_bus/layers/base.py): up to ``limit`` messages per call, the first
awaited as receive awaits it; order, fairness, copies and cancellation as receive's."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing

from csp_bus import ChannelLayer


async def _collect(layer: ChannelLayer, count: int, *channels: str, limit: int) -> list[Any]:
    """``count`` messages by receive_many calls; every batch within 1..limit."""
    got: list[Any] = []
    with trio.fail_after(5):
        while len(got) < count:
            batch = await layer.receive_many(*channels, limit=limit)
            assert type(batch) is list and 1 <= len(batch) <= limit
            got += batch
    assert len(got) == count
    return got


async def test_fifo_within_the_limit(layer: ChannelLayer) -> None:
    for n in range(10):
        await layer.send("q", {"n": n})
    got = await _collect(layer, 10, "q", limit=4)
    assert got == [("q", {"n": n}) for n in range(10)]
    assert await layer.receive_nowait("q") is None


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
async def test_a_send_group_to_one_process_in_batches(layer: ChannelLayer, nested: bool) -> None:
    members = [f"srv!c{n}" for n in range(50)]
    for member in members:
        await layer.group_add("room", member)
    sent = {"text": "hi", "items": [1, {"a": 2}]} if nested else {"text": "hi", "n": 1}
    await layer.send_group("room", sent)
    await layer.send("srv!c7", {"n": 2})
    got = await _collect(layer, 51, "srv!", limit=8)
    assert sorted(channel for channel, _ in got) == sorted([*members, "srv!c7"])
    assert got[-1] == ("srv!c7", {"n": 2})  # FIFO on the prefix
    got[0][1]["text"] = "changed"  # each member has its own copy, all the way down
    if nested:
        got[1][1]["items"][1]["a"] = 3
        got = got[1:]
    assert all(message == sent for _, message in got[1:-1])
    assert await layer.receive_nowait("srv!") is None


async def test_limit_one_is_receive(layer: ChannelLayer) -> None:
    for n in range(3):
        await layer.group_add("room", f"srv!c{n}")
    await layer.send_group("room", {"n": 1})
    for _ in range(3):
        assert len(await layer.receive_many("srv!", limit=1)) == 1
    assert await layer.receive_nowait("srv!") is None


async def test_several_channels(layer: ChannelLayer) -> None:
    await layer.send("plain", {"n": 1})
    for n in range(3):
        await layer.group_add("room", f"srv!c{n}")
    await layer.send_group("room", {"n": 2})
    got = await _collect(layer, 4, "plain", "srv!", limit=64)
    assert sorted(channel for channel, _ in got) == ["plain", "srv!c0", "srv!c1", "srv!c2"]


@pytest.mark.parametrize("limit", [0, -1])
async def test_a_limit_below_one_is_an_error(layer: ChannelLayer, limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        await layer.receive_many("q", limit=limit)


async def test_waits_until_another_task_sends(layer: ChannelLayer) -> None:
    got: list[Any] = []

    async def receiver() -> None:
        got.extend(await layer.receive_many("later", "reply!", limit=16))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.05)  # a layer with a network round trip is waiting too
            assert got == []
            await layer.send("reply!c1", {"n": 1})
    assert got == [("reply!c1", {"n": 1})]


async def test_cancelled_while_waiting_takes_nothing(layer: ChannelLayer) -> None:
    with trio.move_on_after(0.05) as scope:
        await layer.receive_many("q", "p!", limit=16)
    assert scope.cancelled_caught
    await layer.send("p!x", {"n": 1})
    await layer.send("q", {"n": 2})
    with trio.fail_after(5):
        got = await _collect(layer, 2, "q", "p!", limit=16)
    assert sorted(got) == [("p!x", {"n": 1}), ("q", {"n": 2})]


async def test_hammer_cancelled_batches_racing_send_group(make_layer: Any) -> None:
    """send_group to members of one process and a plain channel while batch receivers
    with tiny timeouts race: every (member, message) pair arrives exactly once."""
    layer = await make_layer(capacity=10_000)
    members = [f"gp!c{n}" for n in range(20)] + ["plain"]
    for member in members:
        await layer.group_add("room", member)
    total = 100
    got: list[tuple[str, int]] = []
    done = trio.Event()
    rng = random.Random(7)

    async def receiver(*channels: str) -> None:
        while not done.is_set():
            with trio.move_on_after(rng.uniform(0, 0.002)):
                for channel, message in await layer.receive_many(*channels, limit=7):
                    got.append((channel, message["id"]))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver, "gp!")
            nursery.start_soon(receiver, "gp!", "plain")
            nursery.start_soon(receiver, "plain")
            for n in range(total):
                await layer.send_group("room", {"id": n})
                if n % 4 == 0:
                    await trio.sleep(rng.uniform(0, 0.001))
            done.set()
    while (item := await layer.receive_nowait("gp!", "plain")) is not None:
        got.append((item[0], item[1]["id"]))
    assert len(got) == len(set(got))
    assert sorted(got) == sorted((member, n) for member in members for n in range(total))
