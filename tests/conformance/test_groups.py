"""Groups (DESIGN.md section 3): group_add refreshes a membership that expires after
``group_expiry``; group_discard of a non-member is no error; send_group delivers to every
member and skips a full one without an error."""

from __future__ import annotations

import random
from typing import Any

import trio
import trio.testing

from csp_bus import ChannelLayer


async def _drain(layer: ChannelLayer, *channels: str) -> list[tuple[str, Any]]:
    found = []
    while (item := await layer.receive_nowait(*channels)) is not None:
        found.append(item)
    return found


async def test_send_group_reaches_every_member(layer: ChannelLayer) -> None:
    for member in ["a", "b", "c"]:
        await layer.group_add("room", member)
    await layer.send_group("room", {"text": "hello"})
    for member in ["a", "b", "c"]:
        assert await layer.receive_nowait(member) == (member, {"text": "hello"})
    assert await layer.receive_nowait("a", "b", "c") is None


async def test_adding_twice_delivers_once(layer: ChannelLayer) -> None:
    await layer.group_add("room", "a")
    await layer.group_add("room", "a")
    await layer.send_group("room", {"n": 1})
    assert await _drain(layer, "a") == [("a", {"n": 1})]


async def test_group_discard(layer: ChannelLayer) -> None:
    await layer.group_add("room", "a")
    await layer.group_add("room", "b")
    await layer.group_discard("room", "a")
    await layer.send_group("room", {"n": 1})
    assert await _drain(layer, "a", "b") == [("b", {"n": 1})]


async def test_discard_of_a_non_member_is_no_error(layer: ChannelLayer) -> None:
    await layer.group_discard("nobody-added-this", "a")
    await layer.group_add("room", "a")
    await layer.group_discard("room", "stranger")
    await layer.group_discard("room", "a")
    await layer.group_discard("room", "a")  # twice
    await layer.send_group("room", {})
    assert await layer.receive_nowait("a", "stranger") is None


async def test_send_group_to_an_empty_or_unknown_group_is_no_error(layer: ChannelLayer) -> None:
    await layer.send_group("never-created", {"n": 1})
    await layer.group_add("emptied", "a")
    await layer.group_discard("emptied", "a")
    await layer.send_group("emptied", {"n": 1})
    assert await layer.receive_nowait("a") is None


async def test_channel_in_several_groups(layer: ChannelLayer) -> None:
    await layer.group_add("g1", "a")
    await layer.group_add("g2", "a")
    await layer.group_discard("g1", "a")
    await layer.send_group("g1", {"from": "g1"})
    await layer.send_group("g2", {"from": "g2"})
    assert await _drain(layer, "a") == [("a", {"from": "g2"})]


async def test_groups_are_independent_of_channels_of_the_same_name(layer: ChannelLayer) -> None:
    await layer.group_add("room", "room")
    await layer.send("room", {"direct": True})
    await layer.send_group("room", {"group": True})
    assert await _drain(layer, "room") == [("room", {"direct": True}), ("room", {"group": True})]


async def test_send_group_skips_a_full_member_and_delivers_to_the_others(make_layer: Any) -> None:
    layer = await make_layer(capacity=2)
    for member in ["slow", "fast1", "fast2"]:
        await layer.group_add("room", member)
    await layer.send("slow", {"n": "old1"})
    await layer.send("slow", {"n": "old2"})
    before = await layer.stats()
    await layer.send_group("room", {"n": "new"})  # no ChannelFull
    after = await layer.stats()
    assert await _drain(layer, "fast1") == [("fast1", {"n": "new"})]
    assert await _drain(layer, "fast2") == [("fast2", {"n": "new"})]
    assert await _drain(layer, "slow") == [("slow", {"n": "old1"}), ("slow", {"n": "old2"})]
    assert after["messages_dropped"] - before["messages_dropped"] == 1
    # Room again: the slow member gets the next one.
    await layer.send_group("room", {"n": "next"})
    assert await _drain(layer, "slow") == [("slow", {"n": "next"})]


async def test_process_local_members(layer: ChannelLayer) -> None:
    await layer.group_add("room", "srv!conn1")
    await layer.group_add("room", "srv!conn2")
    await layer.group_add("room", "other!conn1")
    await layer.send_group("room", {"text": "hi"})
    got = sorted(await _drain(layer, "srv!"))
    assert got == [("srv!conn1", {"text": "hi"}), ("srv!conn2", {"text": "hi"})]
    assert await _drain(layer, "other!") == [("other!conn1", {"text": "hi"})]


async def test_members_of_several_processes_joined_interleaved(layer: ChannelLayer) -> None:
    # A prefix met again after another one (members in join order a, b, a, plain, ...)
    # still gets one message per member, and each prefix one queued item.
    members = ["a!1", "b!1", "a!2", "plain", "a!3", "b!2", "ab!1", "a!4", "plain2", "b!3"]
    for member in members:
        await layer.group_add("room", member)
    await layer.send_group("room", {"n": 1})
    for prefix in ("a!", "b!", "ab!"):
        assert (await layer.stats(prefix))["messages_pending"] == 1
    got = await _drain(layer, "a!", "b!", "ab!", "plain", "plain2")
    assert sorted(got) == sorted((member, {"n": 1}) for member in members)


async def test_one_send_group_is_one_message_on_a_process_prefix(make_layer: Any) -> None:
    """Members of one process share their prefix's queue; one send_group reaching
    several of them is queued and capped as ONE message (as channels_redis does), so a
    room larger than the capacity on one server still hears every broadcast."""
    layer = await make_layer(capacity=2)
    for n in range(5):
        await layer.group_add("room", f"srv!conn{n}")
    await layer.send_group("room", {"n": 1})
    got = await _drain(layer, "srv!")
    assert sorted(channel for channel, _ in got) == [f"srv!conn{n}" for n in range(5)]
    assert all(message == {"n": 1} for _, message in got)


async def test_send_group_skips_every_member_of_a_full_process_prefix(make_layer: Any) -> None:
    layer = await make_layer(capacity=2)
    await layer.send("srv!busy", {"n": 1})
    await layer.send("srv!busy", {"n": 2})
    for n in range(3):
        await layer.group_add("room", f"srv!conn{n}")
    await layer.group_add("room", "other!conn")
    await layer.send_group("room", {"text": "hi"})  # no error
    assert [channel for channel, _ in await _drain(layer, "srv!")] == ["srv!busy"] * 2
    assert await _drain(layer, "other!") == [("other!conn", {"text": "hi"})]


async def test_send_group_wakes_a_waiting_receiver(layer: ChannelLayer) -> None:
    await layer.group_add("room", "srv!conn1")
    got: list[Any] = []

    async def receiver() -> None:
        got.append(await layer.receive("srv!"))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.05)
            await layer.send_group("room", {"n": 1})
    assert got == [("srv!conn1", {"n": 1})]


async def test_group_stats_count_members(layer: ChannelLayer) -> None:
    await layer.group_add("g1", "a")
    await layer.group_add("g1", "b!x")
    await layer.group_add("g2", "a")
    stats = await layer.stats()
    assert stats["groups"] == {"g1": 2, "g2": 1}
    await layer.group_discard("g2", "a")
    assert (await layer.stats())["groups"] == {"g1": 2}


async def test_membership_expires_after_group_expiry(make_layer: Any) -> None:
    layer = await make_layer(group_expiry=0.5)
    await layer.group_add("room", "stale")
    await layer.group_add("room", "fresh")
    await trio.sleep(0.35)
    await layer.group_add("room", "fresh")  # refreshed: expires 0.5 s from now
    await trio.sleep(0.35)
    await layer.send_group("room", {"n": 1})
    assert await _drain(layer, "stale", "fresh") == [("fresh", {"n": 1})]
    assert (await layer.stats())["groups"] == {"room": 1}


# -- several members of one process: whatever a layer queues, each member gets its copy -------


async def test_fifo_per_member_with_group_and_direct_messages(layer: ChannelLayer) -> None:
    for n in range(3):
        await layer.group_add("room", f"srv!c{n}")
    await layer.send("srv!c1", {"n": 0})
    await layer.send_group("room", {"n": 1})
    await layer.send("srv!c1", {"n": 2})
    await layer.send_group("room", {"n": 3})
    await layer.send("srv!c2", {"n": 4})
    seen: dict[str, list[int]] = {}
    for channel, message in await _drain(layer, "srv!"):
        seen.setdefault(channel, []).append(message["n"])
    assert seen == {"srv!c0": [1, 3], "srv!c1": [0, 1, 2, 3], "srv!c2": [1, 3, 4]}


async def test_waiting_receiver_and_queued_members_of_one_process(layer: ChannelLayer) -> None:
    for n in range(4):
        await layer.group_add("room", f"srv!c{n}")
    got: list[tuple[str, Any]] = []

    async def receiver() -> None:
        got.append(await layer.receive("srv!"))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.05)
            await layer.send_group("room", {"n": 1})
    got += await _drain(layer, "srv!")
    assert sorted(got) == [(f"srv!c{n}", {"n": 1}) for n in range(4)]


async def test_members_of_one_process_each_get_a_copy(layer: ChannelLayer) -> None:
    for n in range(3):
        await layer.group_add("room", f"srv!c{n}")
    await layer.send_group("room", {"items": [1]})
    first, second, third = await _drain(layer, "srv!")
    first[1]["items"].append("mutated")
    assert second[1] == third[1] == {"items": [1]}


async def test_unread_group_message_of_a_process_expires_for_every_member(
    make_layer: Any,
) -> None:
    layer = await make_layer(expiry=0.5)
    for n in range(3):
        await layer.group_add("room", f"srv!c{n}")
    await layer.group_add("room", "alive!x")
    await layer.send_group("room", {"n": 1})
    assert await layer.receive_nowait("alive!") == ("alive!x", {"n": 1})
    assert (await layer.receive_nowait("srv!"))[0].startswith("srv!c")  # type: ignore[index]
    await trio.sleep(0.65)
    await layer.send_group("room", {"n": 2})
    assert await layer.receive_nowait("alive!") == ("alive!x", {"n": 2})
    # The two whose copies expired unread left the group. (Whether the member that read
    # its copy stays is left to the layer: the memory layer keeps it, the Redis layer
    # takes the whole process for dead.)
    left = await _drain(layer, "srv!")
    assert [message for _, message in left] in ([], [{"n": 2}])
    assert (await layer.stats())["groups"]["room"] == 1 + len(left)


async def test_group_hammer_with_cancelled_receives(make_layer: Any) -> None:
    """send_group to five members of one process and two plain channels while receivers
    with tiny timeouts race: every (member, message) pair arrives exactly once."""
    layer = await make_layer(capacity=10_000)
    members = [f"gp!c{n}" for n in range(5)] + ["plain1", "plain2"]
    for member in members:
        await layer.group_add("room", member)
    total = 200
    got: list[tuple[str, int]] = []
    done = trio.Event()
    rng = random.Random(99)

    async def receiver(*channels: str) -> None:
        while not done.is_set():
            with trio.move_on_after(rng.uniform(0, 0.002)):
                channel, message = await layer.receive(*channels)
                got.append((channel, message["id"]))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver, "gp!")
            nursery.start_soon(receiver, "gp!", "plain1")
            nursery.start_soon(receiver, "plain1", "plain2")
            nursery.start_soon(receiver, "plain2")
            for n in range(total):
                await layer.send_group("room", {"id": n})
                if n % 4 == 0:
                    await trio.sleep(rng.uniform(0, 0.001))
            done.set()
    got += [(c, m["id"]) for c, m in await _drain(layer, "gp!", "plain1", "plain2")]
    assert len(got) == len(set(got))
    assert sorted(got) == sorted((member, n) for member in members for n in range(total))


async def test_group_stats_do_not_count_expired_memberships(make_layer: Any) -> None:
    layer = await make_layer(group_expiry=0.5)
    await layer.group_add("room", "member")
    await layer.group_add("lobby", "member")
    await trio.sleep(0.3)
    await layer.group_add("lobby", "member")  # refreshed
    await trio.sleep(0.35)
    assert (await layer.stats())["groups"] == {"lobby": 1}


async def test_members_of_one_process_get_independent_copies_of_a_flat_message(
    layer: ChannelLayer,
) -> None:
    """A flat message fanned out to several members of one process: each member gets its
    own dict (a layer may decode once per fan-out, but must copy per member)."""
    for n in range(3):
        await layer.group_add("room", f"srv!conn{n}")
    await layer.send_group("room", {"text": "hi", "n": 1, "blob": b"x"})
    got = await _drain(layer, "srv!")
    assert len(got) == 3
    got[0][1]["text"] = "changed"
    got[0][1]["extra"] = True
    assert [message for _, message in got[1:]] == [{"text": "hi", "n": 1, "blob": b"x"}] * 2
    assert len({id(message) for _, message in got}) == 3
