"""Message expiry (DESIGN.md section 3): a message not received within ``expiry`` is
dropped, and a process-local channel whose message expired unread is removed from every
group. Real time (a shared backend has its own clock), so the expiry is short: 0.5 s."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from csp_bus import ChannelFull

EXPIRY = 0.5
PAST_EXPIRY = 0.65


async def test_message_older_than_expiry_is_not_delivered(make_layer: Any) -> None:
    layer = await make_layer(expiry=EXPIRY)
    await layer.send("old", {"n": 1})
    await layer.send("p!a", {"n": 1})
    await trio.sleep(PAST_EXPIRY)
    await layer.send("old", {"n": 2})
    assert await layer.receive_nowait("old", "p!") == ("old", {"n": 2})
    assert await layer.receive_nowait("old", "p!") is None
    with trio.move_on_after(0.1) as scope:
        await layer.receive("old", "p!")
    assert scope.cancelled_caught


async def test_message_younger_than_expiry_is_delivered(make_layer: Any) -> None:
    layer = await make_layer(expiry=EXPIRY)
    await layer.send("young", {"n": 1})
    await trio.sleep(0.2)
    assert await layer.receive_nowait("young") == ("young", {"n": 1})


async def test_expired_messages_free_capacity(make_layer: Any) -> None:
    layer = await make_layer(expiry=EXPIRY, capacity=2)
    await layer.send("cap", {"n": 1})
    await layer.send("cap", {"n": 2})
    with pytest.raises(ChannelFull):
        await layer.send("cap", {"n": 3})
    await trio.sleep(PAST_EXPIRY)
    await layer.send("cap", {"n": 4})
    await layer.send("cap", {"n": 5})
    assert await layer.receive_nowait("cap") == ("cap", {"n": 4})
    assert await layer.receive_nowait("cap") == ("cap", {"n": 5})


async def test_expired_message_is_counted(make_layer: Any) -> None:
    layer = await make_layer(expiry=EXPIRY)
    before = (await layer.stats())["messages_expired"]
    await layer.send("counted", {})
    await trio.sleep(PAST_EXPIRY)
    assert await layer.receive_nowait("counted") is None
    assert (await layer.stats())["messages_expired"] - before == 1


async def test_expired_process_local_member_leaves_its_groups(make_layer: Any) -> None:
    """The dead reader's channel is out of both groups once its message was seen expired."""
    layer = await make_layer(expiry=EXPIRY)
    await layer.group_add("room", "dead!conn")
    await layer.group_add("lobby", "dead!conn")
    await layer.group_add("room", "alive!conn")
    await layer.send_group("room", {"n": 1})
    assert await layer.receive_nowait("alive!") == ("alive!conn", {"n": 1})
    await trio.sleep(PAST_EXPIRY)
    assert await layer.receive_nowait("dead!") is None  # expired, not delivered
    await layer.send_group("room", {"n": 2})
    await layer.send_group("lobby", {"n": 2})
    assert await layer.receive_nowait("dead!") is None
    assert await layer.receive_nowait("alive!") == ("alive!conn", {"n": 2})
    assert (await layer.stats())["groups"] == {"room": 1}


async def test_send_group_drops_an_expired_process_local_member(make_layer: Any) -> None:
    """The rule's point is that dead members must not cost every send_group: a layer
    carrying only group traffic must drop them too, without anyone receiving on them."""
    layer = await make_layer(expiry=EXPIRY)
    await layer.group_add("room", "dead!conn")
    await layer.group_add("room", "alive!conn")
    await layer.send_group("room", {"n": 1})
    assert await layer.receive_nowait("alive!") == ("alive!conn", {"n": 1})
    await trio.sleep(PAST_EXPIRY)
    await layer.send_group("room", {"n": 2})
    assert await layer.receive_nowait("alive!") == ("alive!conn", {"n": 2})
    assert (await layer.stats())["groups"] == {"room": 1}
    assert await layer.receive_nowait("dead!") is None


async def test_expired_plain_member_stays_in_its_group(make_layer: Any) -> None:
    """Only process-local channels leave groups on expiry: a plain channel is read by
    any worker, and a slow moment does not make it dead."""
    layer = await make_layer(expiry=EXPIRY)
    await layer.group_add("room", "plain")
    await layer.send_group("room", {"n": 1})
    await trio.sleep(PAST_EXPIRY)
    assert await layer.receive_nowait("plain") is None
    await layer.send_group("room", {"n": 2})
    assert await layer.receive_nowait("plain") == ("plain", {"n": 2})
    assert (await layer.stats())["groups"] == {"room": 1}


async def test_process_local_member_that_reads_stays(make_layer: Any) -> None:
    layer = await make_layer(expiry=EXPIRY)
    await layer.group_add("room", "srv!conn")
    for n in range(3):
        await layer.send_group("room", {"n": n})
        await trio.sleep(0.3)
        assert await layer.receive_nowait("srv!") == ("srv!conn", {"n": n})
    assert (await layer.stats())["groups"] == {"room": 1}


async def test_send_wait_gets_the_room_an_expired_message_frees(make_layer: Any) -> None:
    """A full channel whose messages expire has room again: a waiting send goes through
    then, not at its own timeout (nor never, without one)."""
    layer = await make_layer(expiry=EXPIRY, capacity=1)
    await layer.send("lapsed", {"n": 1})
    start = trio.current_time()
    with trio.fail_after(EXPIRY + 2):
        await layer.send_wait("lapsed", {"n": 2})
    assert trio.current_time() - start < EXPIRY + 1
    assert await layer.receive_nowait("lapsed") == ("lapsed", {"n": 2})
