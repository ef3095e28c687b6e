"""Redis-specific behaviour beyond the conformance suite: cancellation under load, the
local buffer, the key schema, flush boundaries, big groups, dead members, sync facade."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio

from csp_bus import open_layer
from csp_bus.errors import InvalidLayerURL, LayerClosed
from csp_bus.layers.redis import RedisLayer
from csp_bus.layers.redis.client import Connection, ConnectOptions, Endpoint
from csp_bus.layers.redis.layer import LINGER

pytestmark = pytest.mark.redis


async def raw(redis_server: tuple[str, int], *command: Any) -> Any:
    connection = await Connection.open(
        Endpoint(host=redis_server[0], port=redis_server[1]), ConnectOptions()
    )
    try:
        return await connection.call(*command)
    finally:
        await connection.aclose()


@pytest.mark.parametrize("receive_on", [("plain",), ("proc!",), ("proc!", "plain")])
async def test_cancelled_receives_lose_nothing_and_deliver_once(
    redis_url: str, receive_on: tuple[str, ...]
) -> None:
    """Receives cancelled at random moments while messages flow: every message arrives
    exactly once, in order per channel."""
    targets = ["plain" if name == "plain" else "proc!c1" for name in receive_on]
    total = 300
    async with open_layer(redis_url + "&capacity=1000") as layer:
        await layer.flush()
        got: list[tuple[str, int]] = []
        rng = random.Random(7)

        async def sender() -> None:
            for n in range(total):
                await layer.send(targets[n % len(targets)], {"n": n})
                if n % 10 == 0:
                    await trio.sleep(0.001)

        async def receiver() -> None:
            while len(got) < total:
                with trio.move_on_after(rng.choice([0, 0.0005, 0.001, 0.003, 0.05])):
                    channel, message = await layer.receive(*receive_on)
                    got.append((channel, message["n"]))

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                nursery.start_soon(receiver)
        numbers = [n for _, n in got]
        assert sorted(numbers) == list(range(total)), "lost or duplicated messages"
        for target in targets:
            per_channel = [n for channel, n in got if channel == target]
            assert per_channel == sorted(per_channel)
        assert await layer.receive_nowait(*receive_on) is None


async def test_unclaimed_local_buffer_goes_back_to_redis(
    redis_url: str, redis_server: tuple[str, int]
) -> None:
    async with open_layer(redis_url) as layer:
        await layer.flush()
        assert isinstance(layer, RedisLayer)
        for n in range(20):
            await layer.send("buf!x", {"n": n})
        # one receive makes the prefix loop pop a batch into this process ...
        assert await layer.receive("buf!") == ("buf!x", {"n": 0})
        # ... and nobody asks for more: after LINGER (1 s) it is back in Redis
        await trio.sleep(LINGER)
        for _ in range(50):  # a loaded machine may need a moment more
            if await raw(redis_server, "LLEN", f"{layer.prefix}:q:buf!") == 19:
                break
            await trio.sleep(0.1)
        assert await raw(redis_server, "LLEN", f"{layer.prefix}:q:buf!") == 19
        # still FIFO, from another process's point of view too
        async with open_layer(redis_url) as other:
            assert [(await other.receive("buf!"))[1]["n"] for _ in range(19)] == list(range(1, 20))


async def test_flush_deletes_only_this_prefix(
    redis_url: str, redis_server: tuple[str, int]
) -> None:
    async with open_layer(redis_url) as layer:
        assert isinstance(layer, RedisLayer)
        neighbour = f"{layer.prefix}x:q:keep"  # a longer prefix sharing the first letters
        await raw(redis_server, "SET", neighbour, "1", "EX", 60)
        await layer.send("gone", {})
        await layer.group_add("g", "gone")
        await layer.flush()
        assert await raw(redis_server, "EXISTS", neighbour) == 1
        assert await raw(redis_server, "EXISTS", f"{layer.prefix}:q:gone") == 0
        assert await layer.receive_nowait("gone") is None
        await raw(redis_server, "DEL", neighbour)


async def test_key_schema_and_ttls(redis_url: str, redis_server: tuple[str, int]) -> None:
    async with open_layer(redis_url + "&expiry=30&group_expiry=100") as layer:
        await layer.flush()
        assert isinstance(layer, RedisLayer)
        await layer.send("svc.in", {"a": 1})
        await layer.send("srv.a1!c7", {"b": 2})
        await layer.group_add("room", "srv.a1!c7")
        prefix = layer.prefix
        assert await raw(redis_server, "TYPE", f"{prefix}:q:svc.in") == b"list"
        assert await raw(redis_server, "TYPE", f"{prefix}:q:srv.a1!") == b"list"
        assert await raw(redis_server, "TYPE", f"{prefix}:g:room") == b"zset"
        assert await raw(redis_server, "TYPE", f"{prefix}:m:srv.a1!c7") == b"set"
        assert 30_000 < await raw(redis_server, "PTTL", f"{prefix}:q:svc.in") <= 31_000
        assert 99_000 < await raw(redis_server, "PTTL", f"{prefix}:g:room") <= 100_000
        envelope = await raw(redis_server, "LINDEX", f"{prefix}:q:srv.a1!", -1)
        assert envelope[13:].startswith(b"srv.a1!c7\n")
        await layer.flush()


async def test_send_group_to_ten_thousand_members(redis_url: str) -> None:
    members = 10_000
    url = redis_url + "&channel_capacity=big!:20000"
    async with open_layer(url) as layer:
        await layer.flush()
        async with trio.open_nursery() as nursery:
            for n in range(members):
                nursery.start_soon(layer.group_add, "huge", f"big!m{n}")
        await layer.send_group("huge", {"hello": "all"})
        seen = set()
        with trio.fail_after(30):
            for _ in range(members):
                channel, message = await layer.receive("big!")
                assert message == {"hello": "all"}
                seen.add(channel)
        assert len(seen) == members
        stats = await layer.stats()
        assert stats["groups"] == {"huge": members}
        await layer.flush()


async def test_buffered_fan_out_receive_honours_cancel_close_and_copies(redis_url: str) -> None:
    """The fast path of a receive on a prefix with a buffered send_group envelope: a
    cancelled receive takes nothing, each member gets its own copy, a closed layer
    refuses; in member order (FIFO within the envelope)."""
    names = [f"fast!m{n}" for n in range(4)]
    async with open_layer(redis_url) as layer:
        for name in names:
            await layer.group_add("fast", name)
        await layer.send_group("fast", {"text": "hi", "n": 1})
        first_channel, first = await layer.receive("fast!")  # the envelope is buffered
        first["n"] = 2
        with trio.CancelScope() as scope:
            scope.cancel()
            await layer.receive("fast!")
        assert scope.cancelled_caught
        rest = [await layer.receive("fast!") for _ in range(3)]
        assert [first_channel, *(channel for channel, _ in rest)] == names
        assert [message for _, message in rest] == [{"text": "hi", "n": 1}] * 3
        assert rest[0][1] is not rest[1][1]
        await layer.send_group("fast", {"text": "again"})
        await layer.receive("fast!")
        await layer.flush()
    with pytest.raises(LayerClosed):
        await layer.receive("fast!")


async def test_receive_many_takes_a_send_group_envelope_in_one_call(redis_url: str) -> None:
    # The envelope naming every member on a prefix is popped once; receive_many hands
    # all of its members out from the local buffer, no round trip per message.
    async with open_layer(redis_url) as layer:
        await layer.flush()
        for n in range(300):
            await layer.group_add("room", f"srv!c{n}")
        await layer.send_group("room", {"n": 1})
        with trio.fail_after(5):
            batch = await layer.receive_many("srv!", limit=1000)
        assert sorted(batch) == sorted((f"srv!c{n}", {"n": 1}) for n in range(300))
        await layer.send_group("room", {"n": 2})
        with trio.fail_after(5):
            batch = await layer.receive_many("srv!", limit=200)  # the rest stays buffered
            assert len(batch) == 200
            batch += await layer.receive_many("srv!", limit=200)
        assert sorted(batch) == sorted((f"srv!c{n}", {"n": 2}) for n in range(300))
        assert await layer.receive_nowait("srv!") is None


async def test_full_member_is_skipped_and_counted(
    redis_url: str, redis_server: tuple[str, int]
) -> None:
    async with open_layer(redis_url + "&channel_capacity=tight!:2") as layer:
        await layer.flush()
        assert isinstance(layer, RedisLayer)
        for n in range(3):
            await layer.group_add("g", f"tight!{n}")
        await layer.group_add("g", "roomy")
        # one send_group is ONE item on a process prefix, however many members it has
        await layer.send_group("g", {"x": 1})
        assert await raw(redis_server, "LLEN", f"{layer.prefix}:q:tight!") == 1
        await layer.send_group("g", {"x": 2})
        await layer.send_group("g", {"x": 3})  # tight! is full: its 3 members skipped
        stats = await layer.stats()
        assert stats["messages_dropped"] == 3
        assert stats["channels"]["tight!"]["capacity"] == 2
        assert stats["channels"]["roomy"]["messages_pending"] == 3
        assert (await layer.stats("tight!"))["messages_pending"] == 2
        got = [await layer.receive("tight!") for _ in range(6)]
        assert sorted((channel, message["x"]) for channel, message in got) == sorted(
            (f"tight!{n}", x) for n in range(3) for x in (1, 2)
        )
        assert await layer.receive_nowait("tight!") is None
        await layer.flush()


async def test_dead_reader_leaves_all_groups_on_first_send(
    redis_url: str, redis_server: tuple[str, int]
) -> None:
    """A dead process's members stop costing anything after one send_group sees them,
    and leave the groups that were not sent to as well (no scan of all groups)."""
    async with open_layer(redis_url + "&expiry=0.3") as layer:
        await layer.flush()
        assert isinstance(layer, RedisLayer)
        for g in range(5):
            await layer.group_add(f"g{g}", "dead!a")
            await layer.group_add(f"g{g}", "dead!b")
            await layer.group_add(f"g{g}", "live")
        await layer.send_group("g0", {})
        await trio.sleep(0.5)  # the messages to dead! expire unread
        await layer.send_group("g0", {})
        groups = (await layer.stats())["groups"]
        assert groups == {f"g{g}": 1 for g in range(5)}
        assert await raw(redis_server, "EXISTS", f"{layer.prefix}:m:dead!a") == 0
        await layer.flush()


async def test_sync_facade_over_redis(redis_url: str) -> None:
    from csp_bus import sync

    def in_thread() -> Any:
        with sync.connect(redis_url) as bus:
            bus.send("sync.chan", {"from": "thread"})
            return bus.receive("sync.chan", timeout=5)

    assert await trio.to_thread.run_sync(in_thread) == ("sync.chan", {"from": "thread"})


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis://h:1/0?prefix=a:b", "prefix"),
        ("redis://h:1/0?nope=1", "accepted parameters"),
        ("redis://h:99999/0", "out of range"),
        ("redis://h/0/1", "database number"),
        ("unix://host/x.sock", "socket path"),
        ("redis+sentinel://h:26379", "names the master"),
        ("redis://h/0?ssl_cert_reqs=none", "rediss"),
        ("redis://h/0?timeout=0", "positive"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, match: str) -> None:
    with pytest.raises(InvalidLayerURL, match=match):
        RedisLayer.from_url(url)


def test_url_forms() -> None:
    layer = RedisLayer.from_url(
        "redis://alice:p%40ss@a.example:7000,[::1],b/4?prefix=app&timeout=2&capacity=7"
    )
    config = layer.config
    assert [str(e) for e in config.endpoints] == ["a.example:7000", "[::1]:6379", "b:6379"]
    assert (config.connect.username, config.connect.password) == ("alice", "p@ss")
    assert config.connect.db == 4 and config.connect.timeout == 2
    assert config.prefix == "app" and layer.options.capacity == 7
    assert RedisLayer.from_url("redis://secret@h").config.connect.password == "secret"
    unix = RedisLayer.from_url("unix:///run/redis.sock?db=2").config
    assert unix.endpoints[0].path == "/run/redis.sock" and unix.connect.db == 2
    sentinel = RedisLayer.from_url("redis+sentinel://s1,s2:26380/mymaster/1").config
    assert sentinel.service == "mymaster" and sentinel.connect.db == 1
    assert [e.port for e in sentinel.endpoints] == [26379, 26380]
    assert RedisLayer.from_url("rediss://h/0?ssl_cert_reqs=none").config.connect.tls is not None


async def test_one_blocking_connection_reads_every_prefix(redis_url: str) -> None:
    """20 prefixes waited on in one process share one reader and one BLMPOP; a prefix
    whose first receive arrives while that BLMPOP blocks joins it at once."""
    async with open_layer(redis_url) as layer:
        await layer.flush()
        assert isinstance(layer, RedisLayer)
        got: dict[int, Any] = {}
        last = trio.Event()

        async def wait(i: int) -> None:
            got[i] = await layer.receive(f"many{i}!")
            if i == 19:
                last.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait, 0)
            await trio.sleep(0.1)  # the reader blocks on many0! alone
            for i in range(1, 20):
                nursery.start_soon(wait, i)
            await trio.sleep(0.1)
            (node,) = layer._nodes
            assert len(node._borrowed) == 1  # one dedicated connection for all 20
            start = trio.current_time()
            await layer.send("many19!x", {"i": 19})  # a late joiner
            with trio.fail_after(0.8):  # well under the BLMPOP block time (1 s)
                await last.wait()
            assert trio.current_time() - start < 0.8
            for i in range(19):
                await layer.send(f"many{i}!x", {"i": i})
        assert got == {i: (f"many{i}!x", {"i": i}) for i in range(20)}
        await layer.flush()


async def test_short_lived_prefixes_leave_no_state_behind(redis_url: str) -> None:
    """A process receiving on many one-off prefixes (one per request) keeps no state
    for the idle ones: nothing grows without bound."""
    async with open_layer(redis_url) as layer:
        await layer.flush()
        assert isinstance(layer, RedisLayer)
        for n in range(200):
            await layer.send(f"once{n}!x", {"n": n})
            assert await layer.receive(f"once{n}!") == (f"once{n}!x", {"n": n})
            assert await layer.receive_nowait(f"never{n}!") is None
        await trio.sleep(LINGER + 0.2)
        await layer.send("last!x", {})
        assert await layer.receive("last!") == ("last!x", {})
        assert len(layer._local) <= 2


async def test_receives_on_the_same_channels_share_one_blocking_pop(redis_url: str) -> None:
    """16 receives blocked on the same plain channels (a worker's lanes): the first
    pops alone, the 15 others share one dedicated connection and one BLMPOP, and a
    receive cancelled meanwhile leaves its message in the channel."""
    async with open_layer(redis_url) as layer:
        await layer.flush()
        assert isinstance(layer, RedisLayer)
        got: list[tuple[int, Any]] = []
        scopes = [trio.CancelScope() for _ in range(16)]
        fifteen = trio.Event()

        async def lane(i: int) -> None:
            with scopes[i]:
                got.append((i, await layer.receive("lanes.a", "lanes.b")))
                if len(got) == 15:
                    fifteen.set()

        async with trio.open_nursery() as nursery:
            for i in range(16):
                nursery.start_soon(lane, i)
                await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.1)
            (node,) = layer._nodes
            assert len(node._borrowed) == 2  # two dedicated connections for 16
            scopes[15].cancel()  # the youngest waiter gives up
            await trio.testing.wait_all_tasks_blocked()
            for n in range(16):
                await layer.send("lanes.a" if n % 2 else "lanes.b", {"n": n})
            with trio.fail_after(5):
                await fifteen.wait()
        assert sorted(i for i, _ in got) == list(range(15))
        messages = sorted(message["n"] for _, (_, message) in got)
        left = await layer.receive_nowait("lanes.a", "lanes.b")
        assert left is not None
        assert sorted([*messages, left[1]["n"]]) == list(range(16))
        assert await layer.receive_nowait("lanes.a", "lanes.b") is None
        await layer.flush()
