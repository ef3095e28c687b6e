"""Several servers in one URL (client-side sharding) and Redis Sentinel failover, with
real ``redis-server`` and ``redis-server --sentinel`` processes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from csp_bus import open_layer
from csp_bus.errors import LayerUnavailable
from csp_bus.layers.redis.config import rendezvous

from .conftest import REDIS_SERVER, answers, free_port

pytestmark = pytest.mark.redis


def test_rendezvous_moves_only_the_keys_a_new_node_takes() -> None:
    keys = [f"chan.{n}" for n in range(3000)]
    two = ["a:6379", "b:6379"]
    three = [*two, "c:6379"]
    before = {key: two[rendezvous(key, two)] for key in keys}
    after = {key: three[rendezvous(key, three)] for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    assert all(after[key] == "c:6379" for key in moved)
    assert 800 < len(moved) < 1200  # about a third
    # balanced, and stable: the same answer every time
    assert 1350 < sum(1 for key in keys if before[key] == "a:6379") < 1650
    assert rendezvous("chan.1", two) == rendezvous("chan.1", list(two))


async def test_sharded_layer_spreads_and_receives_across_servers(redis_servers: Any) -> None:
    first, second = redis_servers.start(), redis_servers.start()
    url = f"redis://127.0.0.1:{first.port},127.0.0.1:{second.port}/0?prefix=shard"
    channels = [f"work.{n}" for n in range(40)]
    async with open_layer(url) as layer:
        for n, channel in enumerate(channels):
            await layer.send(channel, {"n": n})
        assert int(first.cli("DBSIZE")) > 5 and int(second.cli("DBSIZE")) > 5
        got = set()
        with trio.fail_after(10):
            for _ in channels:  # one receive over keys on both servers at once
                channel, message = await layer.receive(*channels)
                got.add((channel, message["n"]))
        assert got == {(channel, n) for n, channel in enumerate(channels)}
        assert await layer.receive_nowait(*channels) is None

        # a waiting cross-server receive is woken by a send to either server
        for channel in (channels[0], channels[-1], channels[7]):
            async with trio.open_nursery() as nursery:
                result: list[Any] = []

                async def wait(result: list[Any] = result) -> None:
                    result.append(await layer.receive(*channels))

                nursery.start_soon(wait)
                await trio.sleep(0.05)
                await layer.send(channel, {"late": True})
            assert result == [(channel, {"late": True})]

        # groups: members on many prefixes, spread over both servers
        members = [f"srv{n % 8}!c{n}" for n in range(64)]
        for member in members:
            await layer.group_add("everyone", member)
        await layer.send_group("everyone", {"all": 1})
        got_members = set()
        with trio.fail_after(10):
            for _ in members:
                channel, _message = await layer.receive(*{m.split("!")[0] + "!" for m in members})
                got_members.add(channel)
        assert got_members == set(members)
        stats = await layer.stats()
        assert stats["groups"] == {"everyone": 64}
        await layer.flush()
        assert int(first.cli("DBSIZE")) == 0 and int(second.cli("DBSIZE")) == 0


async def test_sharded_dead_members_leave_their_groups(redis_servers: Any) -> None:
    first, second = redis_servers.start(), redis_servers.start()
    url = f"redis://127.0.0.1:{first.port},127.0.0.1:{second.port}/0?prefix=sd&expiry=0.3"
    async with open_layer(url) as layer:
        dead = [f"gone{n}!x" for n in range(6)]
        for member in dead:
            await layer.group_add("g", member)
            await layer.group_add("h", member)
        await layer.group_add("g", "alive")
        await layer.send_group("g", {})
        await trio.sleep(0.5)
        await layer.send_group("g", {})
        assert (await layer.stats())["groups"] == {"g": 1}


def start_sentinel(root: Path, master_port: int) -> tuple[subprocess.Popen[bytes], int]:
    assert REDIS_SERVER is not None
    port = free_port()
    config = root / f"sentinel-{port}.conf"
    config.write_text(
        f"port {port}\n"
        "bind 127.0.0.1\n"
        f"dir {root}\n"
        f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n"
        "sentinel down-after-milliseconds mymaster 1000\n"
        "sentinel failover-timeout mymaster 5000\n"
        "sentinel parallel-syncs mymaster 1\n"
    )
    process = subprocess.Popen(
        [REDIS_SERVER, str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not answers(port):
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("redis-server --sentinel did not start")
        time.sleep(0.02)
    return process, port


async def wait_until(check: Callable[[], bool], limit: float) -> None:
    """Until another process's state (queried in a thread) is as expected."""
    with trio.fail_after(limit):
        while True:
            if await trio.to_thread.run_sync(check):
                return
            await trio.sleep(0.05)


def sentinel_cli(port: int, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10
    ).stdout.strip()


async def test_sentinel_failover_is_followed(redis_servers: Any, tmp_path: Path) -> None:
    """The master dies; the Sentinel promotes the replica; the layer finds it."""
    master = redis_servers.start("--repl-diskless-sync-delay", "0")
    replica = redis_servers.start("--replicaof", "127.0.0.1", str(master.port))
    sentinel, sentinel_port = start_sentinel(tmp_path, master.port)
    try:
        # the replica is in sync first (Redis 7 delays a diskless sync by default)
        await wait_until(lambda: b"master_link_status:up" in replica.cli("INFO", "replication"), 15)
        # wait until the sentinel knows the replica (it must have one to fail over to)
        await wait_until(
            lambda: "slave" in sentinel_cli(sentinel_port, "SENTINEL", "REPLICAS", "mymaster"), 15
        )
        url = (
            f"redis+sentinel://127.0.0.1:{sentinel_port}/mymaster/0"
            "?prefix=sent&connect_timeout=0.5&timeout=1"
        )
        async with open_layer(url) as layer:
            await layer.send("before", {"n": 1})
            # replicated before the master dies
            await wait_until(lambda: replica.cli("LLEN", "sent:q:before").strip() == b"1", 5)
            master.stop()
            # During the failover operations fail fast; then they reach the new master.
            failures = 0
            with trio.fail_after(20):
                while True:
                    start = trio.current_time()
                    try:
                        await layer.send("after", {"n": 2})
                        break
                    except LayerUnavailable:
                        assert trio.current_time() - start < 2
                        failures += 1
                        await trio.sleep(0.1)
            assert failures > 0
            assert b"role:master" in replica.cli("INFO", "replication")
            assert replica.cli("LLEN", "sent:q:after").strip() == b"1"
            assert await layer.receive("before") == ("before", {"n": 1})
            assert await layer.receive("after") == ("after", {"n": 2})
    finally:
        sentinel.kill()
        sentinel.wait(10)


async def test_sentinel_manual_failover_switches_at_once(
    redis_servers: Any, tmp_path: Path
) -> None:
    """SENTINEL FAILOVER with the old master still up: the layer hears +switch-master
    and moves to the new master without waiting for the old one to be demoted."""
    master = redis_servers.start("--repl-diskless-sync-delay", "0")
    replica = redis_servers.start("--replicaof", "127.0.0.1", str(master.port))
    sentinel, sentinel_port = start_sentinel(tmp_path, master.port)
    try:
        # the replica is in sync first (Redis 7 delays a diskless sync by default)
        await wait_until(lambda: b"master_link_status:up" in replica.cli("INFO", "replication"), 15)
        await wait_until(
            lambda: "slave" in sentinel_cli(sentinel_port, "SENTINEL", "REPLICAS", "mymaster"), 15
        )
        url = f"redis+sentinel://127.0.0.1:{sentinel_port}/mymaster/0?prefix=manual"
        async with open_layer(url) as layer:
            await layer.send("warm", {})
            await wait_until(
                lambda: sentinel_cli(sentinel_port, "SENTINEL", "FAILOVER", "mymaster") == "OK",
                15,
            )
            await wait_until(
                lambda: (
                    str(replica.port)
                    in sentinel_cli(
                        sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"
                    )
                ),
                15,
            )
            await trio.sleep(0.2)  # the announcement reaches the layer's subscription
            with trio.fail_after(10):
                while True:
                    try:
                        await layer.send("after", {"n": 2})
                        break
                    except LayerUnavailable:
                        await trio.sleep(0.1)
            assert replica.cli("LLEN", "manual:q:after").strip() == b"1"
            assert await layer.receive("after") == ("after", {"n": 2})
    finally:
        sentinel.kill()
        sentinel.wait(10)
