"""The sync facade mirrors the layer (DESIGN.md section 3: "the sync facade mirrors
them"): worker threads of the Trio run reach the same layer through
``csp_bus.sync.bind`` with the same rules, on every layer."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from csp_bus import ChannelFull, ChannelLayer, InvalidChannelName, InvalidMessage
from csp_bus.sync import SyncLayer, bind


async def test_threads_and_tasks_share_the_layer(layer: ChannelLayer) -> None:
    bus = bind(layer)

    def worker() -> tuple[str, Any] | None:
        bus.send("to-task", {"from": "thread", "bytes": b"\x00", "tuple": (1, 2)})
        return bus.receive("to-thread", timeout=5)

    async with trio.open_nursery() as nursery:
        results: list[Any] = []

        async def run_worker() -> None:
            results.append(await trio.to_thread.run_sync(worker))

        nursery.start_soon(run_worker)
        with trio.fail_after(5):
            _, message = await layer.receive("to-task")
        assert message == {"from": "thread", "bytes": b"\x00", "tuple": [1, 2]}
        await layer.send("to-thread", {"from": "task"})
    assert results == [("to-thread", {"from": "task"})]


def _errors_in_a_thread(bus: SyncLayer) -> list[str]:
    seen = []
    try:
        bus.send("bad name", {})
    except InvalidChannelName:
        seen.append("name")
    try:
        bus.send("ok", {"s": {1}})
    except InvalidMessage as exc:
        seen.append(exc.path)
    bus.send("tight", {})
    try:
        bus.send("tight", {})
    except ChannelFull:
        seen.append("full")
    try:
        bus.send_wait("tight", {}, timeout=0.1)
    except ChannelFull:
        seen.append("still full")
    assert bus.receive("empty", timeout=0.05) is None
    assert bus.receive_nowait("empty") is None
    return seen


async def test_errors_reach_the_thread(make_layer: Any) -> None:
    layer = await make_layer(channel_capacity="tight:1")
    bus = bind(layer)
    with trio.fail_after(10):
        seen = await trio.to_thread.run_sync(_errors_in_a_thread, bus)
    assert seen == ["name", 'message["s"]', "full", "still full"]


async def test_groups_and_new_channels_from_a_thread(layer: ChannelLayer) -> None:
    bus = bind(layer)

    def worker() -> list[Any]:
        reply = bus.new_channel("reply!")
        bus.group_add("room", reply)
        bus.group_add("room", "gone")
        bus.group_discard("room", "gone")
        bus.send_group("room", {"n": 1})
        got = bus.receive("reply!", timeout=5)
        return [reply, got, bus.stats()["groups"]]

    with trio.fail_after(10):
        reply, got, groups = await trio.to_thread.run_sync(worker)
    assert got == (reply, {"n": 1})
    assert groups == {"room": 1}


async def test_many_threads_receive_each_message_once(layer: ChannelLayer) -> None:
    bus = bind(layer)
    total = 200
    got: list[int] = []

    def consumer() -> None:
        while (found := bus.receive("jobs", timeout=0.3)) is not None:
            got.append(found[1]["n"])  # list.append is atomic

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(trio.to_thread.run_sync, consumer)
            for n in range(total):
                await layer.send_wait("jobs", {"n": n}, timeout=10)
    assert sorted(got) == list(range(total))


@pytest.mark.parametrize("wait", [0.001, 0.01])
async def test_thread_receive_timeouts_lose_nothing(layer: ChannelLayer, wait: float) -> None:
    bus = bind(layer)
    total = 100
    got: list[int] = []
    sent = trio.Event()

    def consumer() -> None:
        while not (sent.is_set() and len(got) == total):
            found = bus.receive("flaky", timeout=wait)
            if found is not None:
                got.append(found[1]["n"])

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, consumer)
            for n in range(total):
                await layer.send("flaky", {"n": n})
                await trio.sleep(0.001)
            sent.set()
    assert got == list(range(total))
