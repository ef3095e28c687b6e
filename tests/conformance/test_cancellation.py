"""Cancellation (``csp_bus/layers/base.py``, "Checkpoints and cancellation"): an operation
either raises ``trio.Cancelled`` having had no effect, or returns having had its whole
effect; a cancelled ``receive`` takes no message. Operations that need not wait are full
checkpoints at least once every 32 calls."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from csp_bus import ChannelLayer

CHECKPOINT_EVERY = 32  # the contract's bound


async def test_receive_cancelled_by_a_timeout_loses_nothing(layer: ChannelLayer) -> None:
    with trio.move_on_after(0.05) as scope:
        await layer.receive("quiet")
    assert scope.cancelled_caught
    await layer.send("quiet", {"n": 1})
    with trio.fail_after(5):
        assert await layer.receive("quiet") == ("quiet", {"n": 1})


@pytest.mark.parametrize("width", [1, 3, 40], ids=["one", "three", "forty"])
async def test_cancelled_waiters_do_not_swallow_later_messages(
    layer: ChannelLayer, width: int
) -> None:
    channels = [f"w{k}" for k in range(width)]
    for _ in range(5):
        with trio.move_on_after(0.01):
            await layer.receive(*channels)
    with trio.move_on_after(0.01):
        await layer.receive("p!", *channels)
    await layer.send(channels[-1], {"n": 1})
    await layer.send("p!x", {"n": 2})
    with trio.fail_after(5):
        assert await layer.receive(channels[-1]) == (channels[-1], {"n": 1})
        assert await layer.receive("p!") == ("p!x", {"n": 2})


@pytest.mark.parametrize("send_first", [True, False], ids=["send-then-cancel", "cancel-then-send"])
async def test_cancel_racing_a_send_delivers_exactly_once(
    layer: ChannelLayer, send_first: bool
) -> None:
    """The send and the cancellation land in the same scheduling tick: the message is
    either returned by the receive or still in the channel, never both, never neither."""
    for trial in range(30):
        scope = trio.CancelScope()
        got: list[Any] = []

        async def receiver(scope: trio.CancelScope = scope, got: list[Any] = got) -> None:
            with scope:
                got.append(await layer.receive("race", "race.other"))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receiver)
                await trio.testing.wait_all_tasks_blocked()
                if send_first:
                    await layer.send("race", {"trial": trial})
                    scope.cancel()
                else:
                    scope.cancel()
                    await layer.send("race", {"trial": trial})
        left = await layer.receive_nowait("race")
        delivered = [item[1] for item in got] + ([left[1]] if left else [])
        assert delivered == [{"trial": trial}]


@pytest.mark.parametrize(
    "total", [1500, pytest.param(60_000, marks=pytest.mark.soak, id="soak-60000")]
)
async def test_hammer_cancelled_receives_racing_sends(make_layer: Any, total: int) -> None:
    """Many receivers with tiny random timeouts race several senders: every message is
    received exactly once (by a receive that returned, or by the final drain)."""
    layer = await make_layer(capacity=1000)
    rng = random.Random(1234)
    channels = ["h0", "h1", "h2", "hp!"]
    selections: list[tuple[str, ...]] = [
        ("h0",),
        ("h0", "h1", "h2"),
        ("hp!",),
        ("h0", "h1", "h2", "hp!"),
        (*(f"pad{k}" for k in range(30)), "h1", "h2", "hp!"),  # a wide receive
    ]
    got: list[int] = []
    cancelled = 0
    senders_done = trio.Event()

    async def receiver(selection: tuple[str, ...]) -> None:
        nonlocal cancelled
        while not senders_done.is_set():
            with trio.move_on_after(rng.uniform(0, 0.002)) as scope:
                channel, message = await layer.receive(*selection)
                got.append(message["id"])
                assert channel.startswith(message["to"])
            cancelled += scope.cancelled_caught

    async def sender(first: int, count: int) -> None:
        for n in range(first, first + count):
            target = channels[n % len(channels)]
            to = f"hp!c{n % 7}" if target == "hp!" else target
            await layer.send_wait(to, {"id": n, "to": target.rstrip("!")}, timeout=10)
            if n % 3 == 0:
                await trio.sleep(rng.uniform(0, 0.001))

    with trio.fail_after(20 + total / 500):
        async with trio.open_nursery() as nursery:
            for k in range(12):
                nursery.start_soon(receiver, selections[k % len(selections)])
            async with trio.open_nursery() as senders:
                for k in range(5):
                    senders.start_soon(sender, k * (total // 5), total // 5)
            senders_done.set()
    while (found := await layer.receive_nowait(*channels)) is not None:
        got.append(found[1]["id"])
    counts = Counter(got)
    assert sorted(counts) == list(range(total))
    assert max(counts.values()) == 1
    assert cancelled > 50  # the hammer really did cancel receives


async def test_cancelled_listen_loses_nothing(layer: ChannelLayer) -> None:
    got: list[int] = []
    for n in range(10):
        await layer.send("listened", {"n": n})
    with trio.move_on_after(0.1):
        async for _, message in layer.listen("listened"):
            got.append(message["n"])
    await layer.send("listened", {"n": 10})
    async for _, message in layer.listen("listened"):
        got.append(message["n"])
        if message["n"] == 10:
            break
    assert got == list(range(11))


# -- operations that need not wait: checkpoints at least every 32 calls -----------------------

Step = Callable[[ChannelLayer, int], Awaitable[Any]]


async def _fill(layer: ChannelLayer) -> None:
    for n in range(100):
        await layer.send("ready", {"n": n})


async def _count_ready(layer: ChannelLayer) -> int:
    count = 0
    while await layer.receive_nowait("ready") is not None:
        count += 1
    return count


async def _count_members(layer: ChannelLayer) -> int:
    await layer.send_group("g", {})
    count = 0
    while await layer.receive_nowait("m!") is not None:
        count += 1
    return count


async def _join(layer: ChannelLayer) -> None:
    for n in range(CHECKPOINT_EVERY * 4):
        await layer.group_add("g", f"m!{n}")


async def _count_left(layer: ChannelLayer) -> int:
    """How many members were discarded (of the ones _join added)."""
    return CHECKPOINT_EVERY * 4 - await _count_members(layer)


async def _two_members(layer: ChannelLayer) -> None:
    await layer.group_add("pair", "left")
    await layer.group_add("pair", "right")


async def _count_pair(layer: ChannelLayer) -> int:
    counts = []
    for member in ("left", "right"):
        count = 0
        while await layer.receive_nowait(member) is not None:
            count += 1
        counts.append(count)
    assert counts[0] == counts[1], f"a send_group reached one member only: {counts}"
    return counts[0]


# name -> (prepare, one step, how many steps took effect given how many returned)
OPERATIONS: dict[str, tuple[Callable[[ChannelLayer], Awaitable[None]] | None, Step, Any]] = {
    "send": (None, lambda layer, n: layer.send("ready", {"n": n}), _count_ready),
    "receive": (_fill, lambda layer, n: layer.receive("ready"), None),
    "receive_nowait": (_fill, lambda layer, n: layer.receive_nowait("ready"), None),
    "group_add": (None, lambda layer, n: layer.group_add("g", f"m!{n}"), _count_members),
    "group_discard": (_join, lambda layer, n: layer.group_discard("g", f"m!{n}"), _count_left),
    "send_group": (_two_members, lambda layer, n: layer.send_group("pair", {"n": n}), _count_pair),
    "send_wait": (None, lambda layer, n: layer.send_wait("ready", {"n": n}), _count_ready),
}


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_cancelled_tight_loop_stops_and_keeps_exact_effects(
    make_layer: Any, operation: str
) -> None:
    layer = await make_layer(capacity=200)
    prepare, step, count_effects = OPERATIONS[operation]
    if prepare is not None:
        await prepare(layer)
    returned = 0
    with trio.CancelScope() as scope:
        scope.cancel()
        for n in range(CHECKPOINT_EVERY * 3):
            await step(layer, n)
            returned += 1
    assert scope.cancelled_caught, "a tight loop of operations never noticed cancellation"
    assert returned < CHECKPOINT_EVERY
    if count_effects is not None:
        assert await count_effects(layer) == returned
    else:  # receives: exactly the returned ones were taken
        assert await _count_ready(layer) == 100 - returned


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_tight_loop_lets_other_tasks_run(make_layer: Any, operation: str) -> None:
    layer = await make_layer(capacity=200)
    prepare, step, _ = OPERATIONS[operation]
    if prepare is not None:
        await prepare(layer)
    ran = trio.Event()
    calls = 0

    async def other_task() -> None:
        ran.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_task)
        while not ran.is_set() and calls < CHECKPOINT_EVERY * 4:
            await step(layer, calls)
            calls += 1
    assert ran.is_set()
    # Trio may run this task again first after its checkpoint (it randomises the order
    # within a batch), so the other task is certain to run by the second checkpoint.
    assert calls <= 2 * CHECKPOINT_EVERY


@pytest.mark.parametrize(
    "channels", [("empty",), ("e1", "e2", "p!"), tuple(f"w{k}" for k in range(40))]
)
async def test_a_receive_that_must_wait_is_always_a_checkpoint(
    layer: ChannelLayer, channels: tuple[str, ...]
) -> None:
    for _ in range(CHECKPOINT_EVERY + 1):
        with trio.CancelScope() as scope:
            scope.cancel()
            with trio.fail_after(1):
                await layer.receive(*channels)
        assert scope.cancelled_caught


async def test_send_wait_that_must_wait_is_always_a_checkpoint(make_layer: Any) -> None:
    layer = await make_layer(capacity=1)
    await layer.send("full", {"n": 0})
    for n in range(CHECKPOINT_EVERY + 1):
        with trio.CancelScope() as scope:
            scope.cancel()
            with trio.fail_after(1):
                await layer.send_wait("full", {"n": n + 1})
        assert scope.cancelled_caught
    assert await layer.receive_nowait("full") == ("full", {"n": 0})
    assert await layer.receive_nowait("full") is None


async def test_send_wait_cancelled_sends_nothing(make_layer: Any) -> None:
    layer = await make_layer(capacity=1)
    await layer.send("one", {"n": 1})
    with trio.move_on_after(0.05) as scope:
        await layer.send_wait("one", {"n": 2})
    assert scope.cancelled_caught
    assert await layer.receive_nowait("one") == ("one", {"n": 1})
    assert await layer.receive_nowait("one") is None
