"""redis:// beside channels_redis, on the same Redis, in one run (``bench/layers.py --layer
redis`` calls :func:`bench_redis`; ``python bench/layers_redis.py`` runs it alone).

Method:
* a private ``redis-server`` on a free port, pinned with ``taskset`` to core 0 (no
  persistence), so every side measures against the same, otherwise idle server;
* this process (csp-bus, Trio) and the peers' subprocess (channels_redis 4.3,
  ``RedisChannelLayer`` and ``RedisPubSubChannelLayer``, asyncio, in the peers' venv
  ``bench/.peers/venv``) run pinned to another core (``bench/layers.py --core``);
* ``redis-benchmark -c 50 -P 1 -t lpush`` on the same server is the ceiling: 50
  connections, one command in flight on each;
* every figure 3 times; medians with the range; ratios of medians.

Figures: sequential send+receive pairs/s (csp-bus on a plain channel, a queue: two
round trips; channels_redis on its ``new_channel()``); N producer/consumer pairs (each
consumer reads its own reply channel: ``new_channel()`` for channels_redis, a
``new_channel("b.i!")`` prefix per pair for csp-bus; csp-bus also with plain channels and
with the interface-server pattern) in messages/s; send_group to 1,000 members, from the
call until every member's task has its message; the 1,000 ``group_add`` calls; csp-bus
alone: the same with 10,000 members.

send_group, like for like: from the call until every member's message has been taken by
what handles that member, each system read the way its deployments read it. csp-bus (the
headline): the server's own ``ReplyDispatcher`` (DESIGN.md 5), one ``receive`` loop on
the process prefix, and each member a connection that takes its message in the
dispatcher's task through ``ReplyChannel.wakeup`` (how the WebSocket server applies
replies: no task wakes per member). channels_redis: each member task awaits ``receive()``
on its own ``new_channel()``, as a Channels consumer does (its API reads one channel per
call, so a task per member is how a group reaches its consumers). Also printed: csp-bus
with a task per member fed through the dispatcher's reply buffers, csp-bus with 1,000
tasks each in ``receive(prefix)``, and every system read by one task (csp-bus: the receive
loop alone; channels_redis: one task receiving the channels one after another).

Setup (the peers' venv is created on first use; by hand it is)::

    python -m venv bench/.peers/venv
    bench/.peers/venv/bin/pip install channels==4.3.2 channels_redis==4.3.0
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import peer_python, private_redis

from csp_bus import open_layer
from csp_bus.server.dispatcher import ReplyChannel, ReplyDispatcher

HERE = Path(__file__).resolve().parent
MESSAGE = {"type": "bench.message", "text": "hello", "n": 1}
RUNS = 3
PEER_REQUIREMENTS = ["channels==4.3.2", "channels_redis==4.3.0"]
SERVER_CORE = 0


def redis_benchmark(port: int) -> float:
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-c", "50", "-P", "1", "-t", "lpush",
         "-n", "100000", "-q"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    found = re.findall(r"LPUSH: ([\d.]+) requests per second", out)
    return float(found[-1])


# ------------------------------------------------------------------------ csp-bus side


async def csp_sequential(url: str, n: int) -> float:
    async with open_layer(url) as layer:
        await layer.send("bench.seq", MESSAGE)
        await layer.receive("bench.seq")  # warm-up: connections open
        start = time.perf_counter()
        for _ in range(n):
            await layer.send("bench.seq", MESSAGE)
            await layer.receive("bench.seq")
        return n / (time.perf_counter() - start)


async def csp_pairs(url: str, count: int, per_pair: int, kind: str) -> float:
    """``kind``: "reply" (a prefix per pair, like a reply channel each), "plain"
    (a normal channel per pair), "server" (DESIGN.md 5, the interface-server pattern:
    one process prefix, each pair's channel ``bench.srv!<i>`` under it; one receive loop
    hands every message to its pair's consumer through a bounded Trio channel)."""
    async with open_layer(url) as layer:
        if kind == "reply":
            sends = [await layer.new_channel(f"bench.r{i}!") for i in range(count)]
            receives = [name.split("!")[0] + "!" for name in sends]
        elif kind == "plain":
            sends = receives = [f"bench.plain{i}" for i in range(count)]
        else:
            sends = [f"bench.srv!{i}" for i in range(count)]
            receives = []

        async def produce(channel: str) -> None:
            for _ in range(per_pair):
                await layer.send_wait(channel, MESSAGE)

        async def consume(channel: str) -> None:
            for _ in range(per_pair):
                await layer.receive(channel)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            if kind == "server":
                pipes = {name: trio.open_memory_channel[Any](16) for name in sends}

                async def dispatch() -> None:
                    for _ in range(count * per_pair):
                        channel, message = await layer.receive("bench.srv!")
                        await pipes[channel][0].send(message)

                async def connection(name: str) -> None:
                    for _ in range(per_pair):
                        await pipes[name][1].receive()

                nursery.start_soon(dispatch)
                for name in sends:
                    nursery.start_soon(produce, name)
                    nursery.start_soon(connection, name)
            else:
                for i in range(count):
                    nursery.start_soon(produce, sends[i])
                    nursery.start_soon(consume, receives[i])
        return count * per_pair / (time.perf_counter() - start)


async def csp_group(url: str, members: int) -> dict[str, float]:
    """send_group to ``members`` channels of one process prefix, four ways of reading:

    * ``group_ms`` (the headline): the interface-server pattern (DESIGN.md 5), with the
      server's own :class:`ReplyDispatcher`: one receive loop on the process prefix, each
      member a connection whose ``wakeup`` hook takes its message in the dispatcher's
      task (as the WebSocket glue does); until every member has taken its message;
    * ``group_tasks_ms``: the same dispatcher handing each message to its member's task
      through its bounded reply buffer (a connection parked in ``receive()``);
    * ``group_waiters_ms``: ``members`` tasks each in ``receive(prefix)``;
    * ``group_one_task_ms``: one task receives them all (the receive loop alone).
    """
    async with open_layer(url) as layer:
        dispatcher = ReplyDispatcher(layer, "bench.g")
        channels = [dispatcher.open_channel() for _ in range(members)]
        prefix = dispatcher.prefix
        start = time.perf_counter()
        for channel in channels:
            await layer.group_add("bench-group", channel.name)
        add_seconds = time.perf_counter() - start
        received = 0
        done = trio.Event()

        def got() -> None:
            nonlocal received
            received += 1
            if received == members:
                done.set()

        def taker(channel: ReplyChannel) -> Callable[[], None]:
            def take() -> None:
                if channel.receive_nowait() is not None:
                    got()

            return take

        async def member(channel: ReplyChannel) -> None:
            await channel.receive()
            got()

        async with trio.open_nursery() as nursery:
            await nursery.start(dispatcher.run)
            for channel in channels:
                channel.wakeup = taker(channel)
            await trio.sleep(0.5)  # the loop is waiting
            start = time.perf_counter()
            await layer.send_group("bench-group", MESSAGE)
            await done.wait()
            server = time.perf_counter() - start
            received, done = 0, trio.Event()
            for channel in channels:
                channel.wakeup = None
                nursery.start_soon(member, channel)
            await trio.sleep(0.5)  # every member task is waiting
            start = time.perf_counter()
            await layer.send_group("bench-group", MESSAGE)
            await done.wait()
            tasks = time.perf_counter() - start
            nursery.cancel_scope.cancel()
        assert dispatcher.delivered == 2 * members, dispatcher.delivered

        # every member task in its own receive on the prefix
        received, done = 0, trio.Event()

        async def waiter() -> None:
            await layer.receive(prefix)
            got()

        async with trio.open_nursery() as nursery:
            for _ in range(members):
                nursery.start_soon(waiter)
            await trio.sleep(0.5)
            start = time.perf_counter()
            await layer.send_group("bench-group", MESSAGE)
            await done.wait()
            waiters = time.perf_counter() - start

        # the same broadcast read by one task (a server's receive loop alone)
        start = time.perf_counter()
        await layer.send_group("bench-group", MESSAGE)
        for _ in range(members):
            await layer.receive(prefix)
        one_task = time.perf_counter() - start
        await layer.flush()
        return {
            "group_ms": server * 1000,
            "group_tasks_ms": tasks * 1000,
            "group_waiters_ms": waiters * 1000,
            "group_one_task_ms": one_task * 1000,
            "group_add_s": add_seconds,
        }


# ------------------------------------------------------------------------ peers


def peer_figures(port: int, kind: str, group_only: bool = False) -> dict[str, float]:
    python = peer_python(PEER_REQUIREMENTS)
    script = [str(python), str(HERE / "peers" / "channels_redis_peer.py"), str(port), kind]
    out = subprocess.run(
        script + (["group"] if group_only else []),
        check=True, capture_output=True, text=True, timeout=600,
    ).stdout  # fmt: skip
    return json.loads(out)  # type: ignore[no-any-return]


# ------------------------------------------------------------------------ report


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _cell(values: list[float], unit: str = "", digits: int = 0) -> str:
    if not values:
        return "-"
    f = f",.{digits}f"
    return f"{_median(values):{f}}{unit} ({min(values):{f}}-{max(values):{f}})"


def bench_redis(runs: int = RUNS, group_only: bool = False, pairs_only: bool = False) -> None:
    with private_redis(SERVER_CORE) as (port, _):
        figures = _measure(port, runs, group_only, pairs_only)
    if pairs_only:
        report_pairs(figures)
    else:
        report(figures, runs, group_only)


def _measure(
    port: int, runs: int, group_only: bool, pairs_only: bool = False
) -> dict[str, list[float]]:
    # generous timeouts: on a shared, overloaded VM a pinned server can stall for seconds
    base = f"redis://127.0.0.1:{port}/0?prefix=bench&capacity=100000&timeout=30&connect_timeout=10"
    group_url = base + "&channel_capacity=bench.g.*:20000"
    figures: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    def measure(name: str, function: Callable[..., Any], *args: Any) -> Any:
        # On a loaded shared VM a stall can exceed the layer's 5 s timeout: retry once.
        for attempt in range(2):
            try:
                return function(*args)
            except Exception as exc:
                if attempt:
                    raise
                print(f"   {name}: {exc!r}; retrying", file=sys.stderr, flush=True)
        raise AssertionError("unreachable")

    for run in range(runs):
        print(f"   run {run + 1}/{runs} ...", file=sys.stderr, flush=True)
        if not group_only:
            add("ceiling", redis_benchmark(port))
            add("csp.sequential", measure("sequential", trio.run, csp_sequential, base, 3000))
            for count, per_pair in ((10, 1000), (50, 400)):
                for kind in ("reply", "plain", "server"):
                    name = f"csp.pairs{count}.{kind}"
                    add(name, measure(name, trio.run, csp_pairs, base, count, per_pair, kind))
        if pairs_only:
            continue
        for members in (1000, 10_000):
            result = measure("group", trio.run, csp_group, group_url, members)
            add(f"csp.group{members}", result["group_ms"])
            add(f"csp.group_tasks{members}", result["group_tasks_ms"])
            add(f"csp.group_waiters{members}", result["group_waiters_ms"])
            add(f"csp.group_one{members}", result["group_one_task_ms"])
            add(f"csp.group_add{members}", result["group_add_s"] * 1000)
        for kind in ("core", "pubsub"):
            peer = measure(kind, peer_figures, port, kind, group_only)
            keys = ["group_ms", "group_one_task_ms"]
            if not group_only:
                keys += ["sequential", "pairs10", "pairs50"]
            for key in keys:
                add(f"{kind}.{key}", peer[key])
            add(f"{kind}.group_add", peer["group_add_s"] * 1000)
    return figures


def report(figures: dict[str, list[float]], runs: int, group_only: bool = False) -> None:
    m: Callable[[str], float] = lambda name: _median(figures[name])  # noqa: E731
    print(f"\n== redis:// vs channels_redis 4.3 (same private redis-server, {runs} runs, medians)")
    header = f"{'figure':<34}{'csp-bus':>24}{'RedisChannelLayer':>24}{'RedisPubSub':>24}"
    print(header + f"{'vs core':>9}{'vs pubsub':>10}")
    rows: list[tuple[str, str, str, str]] = [
        ("sequential send+receive /s", "csp.sequential", "core.sequential", "pubsub.sequential"),
        ("10 pairs, reply channels msg/s", "csp.pairs10.reply", "core.pairs10", "pubsub.pairs10"),
        ("50 pairs, reply channels msg/s", "csp.pairs50.reply", "core.pairs50", "pubsub.pairs50"),
    ]
    for label, ours, core, pubsub in [] if group_only else rows:
        print(
            f"{label:<34}{_cell(figures[ours]):>24}{_cell(figures[core]):>24}"
            f"{_cell(figures[pubsub]):>24}{m(ours) / m(core):>8.1f}x{m(ours) / m(pubsub):>9.1f}x"
        )
    for label, ours, core, pubsub, digits in (
        ("send_group 1,000: ms to all (*)", "csp.group1000", "core.group_ms", "pubsub.group_ms", 1),
        (
            "  same, dispatched to 1,000 tasks: ms",
            "csp.group_tasks1000",
            "core.group_ms",
            "pubsub.group_ms",
            1,
        ),
        (
            "  same, 1,000 receives waiting: ms",
            "csp.group_waiters1000",
            "core.group_ms",
            "pubsub.group_ms",
            1,
        ),
        (
            "  same, read by one task: ms",
            "csp.group_one1000",
            "core.group_one_task_ms",
            "pubsub.group_one_task_ms",
            1,
        ),
        (
            "1,000 group_add calls: ms",
            "csp.group_add1000",
            "core.group_add",
            "pubsub.group_add",
            0,
        ),
    ):
        cells = [_cell(figures[name], " ms", digits) for name in (ours, core, pubsub)]
        print(
            f"{label:<34}{cells[0]:>24}{cells[1]:>24}{cells[2]:>24}"
            f"{m(core) / m(ours):>8.1f}x{m(pubsub) / m(ours):>9.1f}x  (>1x: csp-bus faster)"
        )
    print(f"{'send_group 10,000: ms to all (*)':<34}{_cell(figures['csp.group10000'], ' ms'):>24}")
    print(
        f"{'  same, dispatched to 10,000 tasks':<34}"
        f"{_cell(figures['csp.group_tasks10000'], ' ms'):>24}"
    )
    print(
        f"{'  same, 10,000 receives waiting: ms':<34}"
        f"{_cell(figures['csp.group_waiters10000'], ' ms'):>24}"
    )
    print(f"{'  same, read by one task: ms':<34}{_cell(figures['csp.group_one10000'], ' ms'):>24}")
    print(f"{'10,000 group_add calls: ms':<34}{_cell(figures['csp.group_add10000'], ' ms'):>24}")
    print(
        "(*) until every member has taken its message. csp-bus: one receive loop on the\n"
        "    process prefix, each member a connection taking its message in the dispatcher's\n"
        "    task (ReplyChannel.wakeup, as the WebSocket server does; DESIGN.md 5);\n"
        "    channels_redis: each member task awaits its own new_channel() (a Channels\n"
        "    consumer; the layer itself runs one loop per prefix feeding per-channel queues)."
    )
    if not group_only:
        report_pairs(figures)


def report_pairs(figures: dict[str, list[float]]) -> None:
    ceiling = _median(figures["ceiling"])
    print("\n-- csp-bus pairs by channel kind (msg/s) and the redis-benchmark ceiling")
    print(f"{'redis-benchmark -c 50 -P 1 LPUSH':<34}{_cell(figures['ceiling']):>24} req/s")
    for count in (10, 50):
        for kind, text in (
            ("reply", "a reply prefix per pair"),
            ("plain", "a plain channel per pair"),
            ("server", "one server prefix, dispatched"),
        ):
            name = f"csp.pairs{count}.{kind}"
            print(
                f"{f'{count} pairs, {text}':<34}{_cell(figures[name]):>24}"
                f"   {_median(figures[name]) / ceiling:.2f} of the ceiling"
            )


def main() -> None:
    if os.cpu_count() and os.cpu_count() > 1 and hasattr(os, "sched_setaffinity"):  # type: ignore[operator]
        os.sched_setaffinity(0, {1})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--group-only", action="store_true", help="only the send_group figures")
    parser.add_argument(
        "--pairs-only", action="store_true", help="only csp-bus's pairs and the ceiling"
    )
    args = parser.parse_args()
    bench_redis(args.runs, args.group_only, args.pairs_only)


if __name__ == "__main__":
    main()
