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
# At most one member per queue key, so that the order of a send_group's deliveries into
# one queue (which the contract does not fix) never matters.
MEMBERS = ["a", "b", "p!x", "q?1"]
GROUPS = ["g1", "g2"]

operations = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.sampled_from(SEND_TO)),
        st.tuples(st.just("send"), st.sampled_from(SEND_TO)),  # sends twice as likely
        st.tuples(
            st.just("receive"),
            st.lists(st.sampled_from(RECEIVE_FROM), min_size=1, max_size=4, unique=True),
        ),
        st.tuples(st.just("add"), st.sampled_from(GROUPS), st.sampled_from(MEMBERS)),
        st.tuples(st.just("discard"), st.sampled_from(GROUPS), st.sampled_from(MEMBERS)),
        st.tuples(st.just("send_group"), st.sampled_from(GROUPS)),
        st.tuples(st.just("flush")),
    ),
    max_size=60,
)


class Model:
    def __init__(self) -> None:
        self.queues: dict[str, deque[tuple[str, int]]] = {}
        self.groups: dict[str, set[str]] = {}

    def queue(self, channel: str) -> deque[tuple[str, int]]:
        return self.queues.setdefault(queue_key(channel), deque())

    def has_room(self, channel: str) -> bool:
        return len(self.queue(channel)) < CAPACITY

    def take(self, channels: list[str], got: tuple[str, dict[str, Any]] | None) -> None:
        ready = [name for name in channels if self.queues.get(name)]
        if not ready:
            assert got is None, f"receive_nowait{tuple(channels)} returned {got}, expected None"
            return
        assert got is not None, f"receive_nowait{tuple(channels)} returned None; ready: {ready}"
        item = (got[0], got[1]["id"])
        for name in ready:
            if self.queues[name][0] == item:
                self.queues[name].popleft()
                return
        heads = {name: self.queues[name][0] for name in ready}
        raise AssertionError(f"receive_nowait returned {item}, not one of the heads {heads}")


_SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(_SETTINGS, max_examples=150)
@given(ops=operations)
async def test_operations_match_the_model(layer_url: str, ops: list[tuple[Any, ...]]) -> None:
    await _check_against_the_model(layer_url, ops)


@pytest.mark.soak
@settings(_SETTINGS, max_examples=5000)
@given(ops=operations)
async def test_operations_match_the_model_soak(layer_url: str, ops: list[tuple[Any, ...]]) -> None:
    await _check_against_the_model(layer_url, ops)


async def _check_against_the_model(layer_url: str, ops: list[tuple[Any, ...]]) -> None:
    separator = "&" if "?" in layer_url else "?"
    model = Model()
    next_id = 0
    async with open_layer(f"{layer_url}{separator}capacity={CAPACITY}") as layer:
        await layer.flush()
        for op in ops:
            kind = op[0]
            if kind == "send":
                next_id += 1
                if model.has_room(op[1]):
                    await layer.send(op[1], {"id": next_id})
                    model.queue(op[1]).append((op[1], next_id))
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
                for member in model.groups.get(op[1], ()):
                    if model.has_room(member):
                        model.queue(member).append((member, next_id))
            else:
                await layer.flush()
                model = Model()

        stats = await layer.stats()
        pending = {key: len(queue) for key, queue in model.queues.items() if queue}
        assert stats["messages_pending"] == sum(pending.values())
        assert {k: v["messages_pending"] for k, v in stats["channels"].items()} == pending
        assert stats["groups"] == {g: len(m) for g, m in model.groups.items() if m}
        # Drain channel by channel: what is left comes out in FIFO order.
        for name in RECEIVE_FROM:
            expected = list(model.queues.get(queue_key(name), ()))
            left = []
            while (found := await layer.receive_nowait(name)) is not None:
                left.append((found[0], found[1]["id"]))
            assert left == expected, name
