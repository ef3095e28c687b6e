"""Random sequences of operations checked against a model of the contract.

Hypothesis draws a sequence of sends, non-blocking receives on one or several channels,
group operations and flushes; every result is compared with a plain Python model of
DESIGN.md section 3: FIFO queues per queue key (``a!x`` queues on ``a!``) holding at most
``capacity`` messages, groups as sets, ``send_group`` skipping full members. Where the
contract leaves a choice (which ready channel a receive on several serves), the model
accepts any allowed answer: the head of one of the listed, non-empty queues.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csp_bus import ChannelFull, open_layer
from csp_bus.messages import queue_key

CAPACITY = 3
SEND_TO = ["a", "b", "p!x", "p!y", "q?1"]
RECEIVE_FROM = ["a", "b", "p!", "q?1"]
GROUPS = ["g1", "g2"]
# With a small capacity, at most one member per queue key: whether one send_group
# reaching several channels of one process counts once or per channel against the
# capacity is the layer's choice, so the model only mixes such members with a capacity
# no sequence reaches.
MEMBERS = ["a", "b", "p!x", "q?1"]
MEMBERS_OF_ONE_PROCESS = ["a", "p!x", "p!y", "p!z", "q?1"]
BIG_CAPACITY = 1000


def operations(members: list[str]) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    send = st.tuples(st.just("send"), st.sampled_from(SEND_TO))
    receive = st.tuples(
        st.just("receive"),
        st.lists(st.sampled_from(RECEIVE_FROM), min_size=1, max_size=4, unique=True),
    )
    add = st.tuples(st.just("add"), st.sampled_from(GROUPS), st.sampled_from(members))
    send_group = st.tuples(st.just("send_group"), st.sampled_from(GROUPS))
    step = st.one_of(
        send,
        receive,
        add,
        send_group,
        send,
        receive,
        add,
        send_group,
        st.tuples(st.just("discard"), st.sampled_from(GROUPS), st.sampled_from(members)),
        st.tuples(st.just("flush")),
    )
    return st.lists(step, min_size=20, max_size=80)


class Model:
    """Queues of items ``[targets, id]``: a send queues one target; a send_group queues,
    per queue key, one item for all the members there (received in any order)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.queues: dict[str, deque[tuple[set[str], int]]] = {}
        self.groups: dict[str, set[str]] = {}

    def queue(self, channel: str) -> deque[tuple[set[str], int]]:
        return self.queues.setdefault(queue_key(channel), deque())

    def has_room(self, channel: str) -> bool:
        return len(self.queue(channel)) < self.capacity

    def send_group(self, group: str, ident: int) -> None:
        by_key: dict[str, set[str]] = {}
        for member in self.groups.get(group, ()):
            by_key.setdefault(queue_key(member), set()).add(member)
        for members in by_key.values():
            if self.has_room(next(iter(members))):
                self.queue(next(iter(members))).append((members, ident))

    def take(self, channels: list[str], got: tuple[str, dict[str, Any]] | None) -> None:
        ready = [name for name in channels if self.queues.get(name)]
        if not ready:
            assert got is None, f"receive_nowait{tuple(channels)} returned {got}, expected None"
            return
        assert got is not None, f"receive_nowait{tuple(channels)} returned None; ready: {ready}"
        channel, ident = got[0], got[1]["id"]
        for name in ready:
            targets, head = self.queues[name][0]
            if head == ident and channel in targets:
                targets.discard(channel)
                if not targets:
                    self.queues[name].popleft()
                return
        heads = {name: self.queues[name][0] for name in ready}
        raise AssertionError(f"receive_nowait returned {got}, not one of the heads {heads}")

    def pending(self, key: str) -> tuple[int, int]:
        """(items, channel copies) queued on ``key``: a layer's count lies between."""
        queue = self.queues.get(key, deque())
        return len(queue), sum(len(targets) for targets, _ in queue)


_SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(_SETTINGS, max_examples=150)
@given(ops=operations(MEMBERS))
async def test_operations_match_the_model(layer_url: str, ops: list[tuple[Any, ...]]) -> None:
    await _check_against_the_model(layer_url, ops, CAPACITY)


@settings(_SETTINGS, max_examples=100)
@given(ops=operations(MEMBERS_OF_ONE_PROCESS))
async def test_operations_with_members_of_one_process_match_the_model(
    layer_url: str, ops: list[tuple[Any, ...]]
) -> None:
    await _check_against_the_model(layer_url, ops, BIG_CAPACITY)


@pytest.mark.soak
@settings(_SETTINGS, max_examples=5000)
@given(ops=operations(MEMBERS))
async def test_operations_match_the_model_soak(layer_url: str, ops: list[tuple[Any, ...]]) -> None:
    await _check_against_the_model(layer_url, ops, CAPACITY)


@pytest.mark.soak
@settings(_SETTINGS, max_examples=3000)
@given(ops=operations(MEMBERS_OF_ONE_PROCESS))
async def test_operations_with_members_of_one_process_match_the_model_soak(
    layer_url: str, ops: list[tuple[Any, ...]]
) -> None:
    await _check_against_the_model(layer_url, ops, BIG_CAPACITY)


async def _check_against_the_model(
    layer_url: str, ops: list[tuple[Any, ...]], capacity: int
) -> None:
    separator = "&" if "?" in layer_url else "?"
    model = Model(capacity)
    next_id = 0
    async with open_layer(f"{layer_url}{separator}capacity={capacity}") as layer:
        await layer.flush()
        for op in ops:
            kind = op[0]
            if kind == "send":
                next_id += 1
                if model.has_room(op[1]):
                    await layer.send(op[1], {"id": next_id})
                    model.queue(op[1]).append(({op[1]}, next_id))
                else:
                    with pytest.raises(ChannelFull):
                        await layer.send(op[1], {"id": next_id})
            elif kind == "receive":
                model.take(op[1], await layer.receive_nowait(*op[1]))
            elif kind == "add":
                await layer.group_add(op[1], op[2])
                model.groups.setdefault(op[1], set()).add(op[2])
            elif kind == "discard":
                await layer.group_discard(op[1], op[2])
                model.groups.get(op[1], set()).discard(op[2])
            elif kind == "send_group":
                next_id += 1
                await layer.send_group(op[1], {"id": next_id})
                model.send_group(op[1], next_id)
            else:
                await layer.flush()
                model = Model(capacity)

        stats = await layer.stats()
        figures = {key: v["messages_pending"] for key, v in stats["channels"].items()}
        for key in model.queues.keys() | figures.keys():
            low, high = model.pending(key)
            assert low <= figures.get(key, 0) <= high, (key, figures, model.queues)
        assert stats["messages_pending"] == sum(figures.values())
        assert stats["groups"] == {g: len(m) for g, m in model.groups.items() if m}
        # Drain channel by channel: what is left comes out in FIFO order (the copies of
        # one send_group to several channels of one process in any order).
        for name in RECEIVE_FROM:
            queue = model.queues.get(queue_key(name), deque())
            left = []
            while (found := await layer.receive_nowait(name)) is not None:
                left.append((found[0], found[1]["id"]))
            assert [ident for _, ident in left] == [
                ident for targets, ident in queue for _ in targets
            ], name
            assert sorted(left) == sorted((t, ident) for targets, ident in queue for t in targets)
