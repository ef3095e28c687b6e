"""Channel-layer throughput and latency, csp-bus beside the peers, in one run.

    python bench/layers.py                 # every part
    python bench/layers.py --layer memory  # memory:// vs Channels' InMemoryChannelLayer
    python bench/layers.py --layer redis   # redis:// vs channels_redis (see bench_redis)

Method (shared/research/anchors.md): the process is pinned to one core with taskset
when available, each figure is run 3 times, the median is printed with the range, and
ratios compare medians measured in this same run. Peers run in their own virtualenv
(bench/_peers.py) in a subprocess, so the csp-bus side stays Trio-only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import peer_python

from csp_bus import open_layer

HERE = Path(__file__).resolve().parent
MESSAGE = {"type": "bench.message", "text": "hello", "n": 1}
RUNS = 3


def median_range(values: list[float]) -> str:
    return f"{statistics.median(values):>10,.0f}  ({min(values):,.0f}-{max(values):,.0f})"


def pin(core: int) -> None:
    """Pin this process to one core (Linux), as the peers' figures were taken."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > core:
        os.sched_setaffinity(0, {core})


# ------------------------------------------------------------------------ memory://


async def memory_sequential(n: int) -> float:
    async with open_layer("memory://") as layer:
        start = time.perf_counter()
        for _ in range(n):
            await layer.send("bench", MESSAGE)
            await layer.receive("bench")
        return n / (time.perf_counter() - start)


async def memory_producer_consumer(n: int) -> float:
    async with open_layer("memory://") as layer:

        async def produce() -> None:
            for _ in range(n):
                await layer.send_wait("bench", MESSAGE)

        async def consume() -> None:
            for _ in range(n):
                await layer.receive("bench")

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            nursery.start_soon(consume)
        return n / (time.perf_counter() - start)


async def memory_fan_in(n: int, width: int, use_listen: bool) -> float:
    """send to one of ``width`` channels, then receive on all ``width`` at once."""
    channels = [f"bench.{i}" for i in range(width)]
    async with open_layer("memory://") as layer:
        listener = layer.listen(*channels)
        start = time.perf_counter()
        for i in range(n):
            await layer.send(channels[i % width], MESSAGE)
            if use_listen:
                await listener.__anext__()
            else:
                await layer.receive(*channels)
        return n / (time.perf_counter() - start)


async def memory_blocking_receive_latency(n: int, width: int) -> float:
    """Median µs from send to the return of a receive that was already waiting."""
    channels = [f"bench.{i}" for i in range(width)]
    samples: list[float] = []
    async with open_layer("memory://") as layer:
        sent_at = [0.0]

        async def receiver() -> None:
            await layer.receive(*channels)
            samples.append(time.perf_counter() - sent_at[0])

        for i in range(n):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receiver)
                await trio.testing.wait_all_tasks_blocked()
                sent_at[0] = time.perf_counter()
                await layer.send(channels[i % width], MESSAGE)
    return statistics.median(samples) * 1e6


def run_trio(function: Callable[..., Awaitable[float]], *args: object) -> list[float]:
    return [trio.run(function, *args) for _ in range(RUNS)]


def peer_inmemory_once(python: Path, n: int) -> dict[str, float]:
    out = subprocess.run(
        [str(python), str(HERE / "peers" / "channels_inmemory.py"), str(n)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out))


def bench_memory(n: int) -> None:
    print(f"== memory:// vs Channels 4 InMemoryChannelLayer ({n:,} messages, {RUNS} runs)")
    python = peer_python(["channels==4.3.2"])
    ours_seq: list[float] = []
    ours_pc: list[float] = []
    theirs_seq: list[float] = []
    theirs_pc: list[float] = []
    # Rounds alternate peer and csp-bus, so that noise on a shared machine hits both.
    for _ in range(RUNS):
        figures = peer_inmemory_once(python, n)
        theirs_seq.append(figures["sequential"])
        theirs_pc.append(figures["producer_consumer"])
        ours_seq.append(trio.run(memory_sequential, n))
        ours_pc.append(trio.run(memory_producer_consumer, n))
    print(f"{'figure (msg/s)':<40}{'csp-bus':>32}{'Channels':>32}{'ratio':>8}")
    for label, ours, theirs in (
        ("sequential send+receive", ours_seq, theirs_seq),
        ("1 producer || 1 consumer", ours_pc, theirs_pc),
    ):
        ratio = statistics.median(ours) / statistics.median(theirs)
        print(f"{label:<40}{median_range(ours):>32}{median_range(theirs):>32}{ratio:>7.2f}x")
    print(f"(load average before: {os.getloadavg()[0]:.2f})")

    print("\n== memory:// receive on many channels at once (send+receive pairs/s)")
    one = run_trio(memory_fan_in, n, 1, False)
    many = run_trio(memory_fan_in, n, 1000, False)
    one_l = run_trio(memory_fan_in, n, 1, True)
    many_l = run_trio(memory_fan_in, n, 1000, True)
    for label, narrow, wide in (
        ("receive(*channels)", one, many),
        ("listen(*channels)", one_l, many_l),
    ):
        cost = statistics.median(narrow) / statistics.median(wide)
        print(
            f"{label:<22} 1 channel {median_range(narrow)}   1,000 channels "
            f"{median_range(wide)}   cost of 1,000 = {cost:.2f}x cost of 1"
        )

    print("\n== memory:// latency of a waiting receive (median µs from send to return)")
    for width in (1, 1000):
        figures = [trio.run(memory_blocking_receive_latency, 2000, width) for _ in range(RUNS)]
        print(f"{width:>5} channel(s): {statistics.median(figures):8.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", choices=["memory", "redis", "all"], default="all")
    parser.add_argument("-n", type=int, default=100_000, help="messages per memory figure")
    parser.add_argument("--core", type=int, default=1, help="core to pin to (-1: no pinning)")
    args = parser.parse_args()
    if args.core >= 0:
        pin(args.core)
    if args.layer in ("memory", "all"):
        bench_memory(args.n)
    if args.layer in ("redis", "all"):
        from layers_redis import bench_redis

        bench_redis()


if __name__ == "__main__":
    main()
