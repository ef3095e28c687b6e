"""Worker dispatch: send -> consumer -> reply, csp-bus beside Channels 4, in one run.

    python bench/worker.py             # everything (about a minute)
    python bench/worker.py --quick     # fewer messages, no peer
    python bench/worker.py --pin       # pin the process to one core

What is measured, all on ``memory://`` (so the figures are about dispatch, not a
backend). A producer task sends ``{"reply_channel": ...}`` to ``bench.in``; the consumer
answers on the reply channel; the producer counts replies.

* ``worker, N threads``: :class:`csp_bus.worker.Worker` with a no-op *sync* consumer
  (``message.reply_channel.send({})``) running in its threads, N = 1 and 8.
* ``inline task``: the same receive -> reply done by a plain Trio task, no worker, no
  thread. It is what the layer costs; the **per-message dispatch overhead** is
  ``1/worker rate - 1/inline rate`` (routing, the Message object, the hand-off to a
  thread and back, the reply's trip from the thread to the loop).
* ``sequential`` keeps one message in flight (latency-bound); ``pipelined`` keeps 64.
* Both wall-clock time and process CPU time (all threads) per message are printed: on a
  shared, loaded machine the wall figure includes waiting for a core, the CPU figure
  is what the dispatch itself costs.
* The peer: Channels 4.3's ``channels.worker.Worker`` + ``ChannelNameRouter`` + a
  ``SyncConsumer`` replying with ``async_to_sync(channel_layer.send)``, on its
  InMemoryChannelLayer (bench/peers/channels_worker.py, in the peers' venv).

Method as in bench/layers.py, each figure 3 runs, the median printed with the range,
peer and csp-bus in the same run. Not pinned by default: a worker hands each message to
another thread and back, and on one core every hand-off is a context switch (``--pin``
shows that case; both sides get the same treatment).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from csp_bus import open_layer
from csp_bus.consumers import Message
from csp_bus.routing import route
from csp_bus.worker import Worker

HERE = Path(__file__).resolve().parent
RUNS = 3
URL = "memory://?capacity=100000"


def pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > core:
        os.sched_setaffinity(0, {core})


def reply(message: Message) -> None:
    message.reply_channel.send({})  # type: ignore[union-attr]


async def drive(layer, reply_channel: str, n: int, window: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Send n requests keeping ``window`` in flight: (replies per second, process CPU
    seconds per message -- every thread of the process counted)."""
    message = {"reply_channel": reply_channel}
    cpu = time.process_time()
    start = time.perf_counter()
    sent = received = 0
    while received < n:
        while sent < n and sent - received < window:
            await layer.send("bench.in", message)
            sent += 1
        await layer.receive(reply_channel)
        received += 1
    return n / (time.perf_counter() - start), (time.process_time() - cpu) / n


async def with_worker(threads: int, n: int, window: int) -> tuple[float, float]:
    async with open_layer(URL) as layer, trio.open_nursery() as nursery:
        worker = Worker(layer, [route("bench.in", reply)], threads=threads)
        await nursery.start(worker.run)
        reply_channel = await layer.new_channel("bench.reply?")
        await drive(layer, reply_channel, 500, window)  # warm-up: threads started
        rate = await drive(layer, reply_channel, n, window)
        worker.stop()
        return rate


async def inline(n: int, window: int) -> tuple[float, float]:
    async with open_layer(URL) as layer, trio.open_nursery() as nursery:

        async def consumer() -> None:
            while True:
                _, message = await layer.receive("bench.in")
                await layer.send(message["reply_channel"], {})

        nursery.start_soon(consumer)
        reply_channel = await layer.new_channel("bench.reply?")
        await drive(layer, reply_channel, 500, window)
        rate = await drive(layer, reply_channel, n, window)
        nursery.cancel_scope.cancel()
        return rate


def measure(label: str, function, *args) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Median rate and median CPU seconds per message over RUNS runs (prints both)."""
    results = [trio.run(function, *args) for _ in range(RUNS)]
    rates = [rate for rate, _ in results]
    cpus = [cpu for _, cpu in results]
    print(
        f"  {label:<34} {statistics.median(rates):>9,.0f} msg/s"
        f"  ({min(rates):,.0f}-{max(rates):,.0f})"
        f"   CPU {statistics.median(cpus) * 1e6:6.1f} us/msg",
        flush=True,
    )
    return statistics.median(rates), statistics.median(cpus)


def peer(n: int, pinned: bool) -> dict[str, list[float]] | None:
    try:
        from _peers import peer_python

        python = peer_python(["channels==4.3.2", "django==5.2.19"])
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"  (peer skipped: {exc})")
        return None
    results: dict[str, list[float]] = {"sequential": [], "pipelined": []}
    for _ in range(RUNS):
        command = [str(python), str(HERE / "peers" / "channels_worker.py"), str(n)]
        if pinned:
            command = ["taskset", "-c", "1", *command]
        out = subprocess.run(
            command,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        figures = json.loads(out)
        for key in results:
            results[key].append(figures[key])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages, no peer")
    parser.add_argument("--pin", action="store_true", help="pin the process to one core")
    args = parser.parse_args()
    n = 3000 if args.quick else 20000
    if args.pin:
        pin(1)
    print(f"worker dispatch, memory://, {n} messages per run, median of {RUNS} (range)")
    table: dict[tuple[str, str], float] = {}
    for mode, window in (("sequential", 1), ("pipelined", 64)):
        print(f"{mode} (window {window}):")
        base, base_cpu = measure("inline task (no worker)", inline, n, window)
        table[(mode, "inline")] = base
        for threads in (1, 8):
            rate, cpu = measure(
                f"worker, {threads} thread(s), sync no-op", with_worker, threads, n, window
            )
            table[(mode, f"w{threads}")] = rate
            overhead = (1 / rate - 1 / base) * 1e6
            print(
                f"  {'':<34} dispatch overhead {overhead:6.1f} us/message wall, "
                f"{(cpu - base_cpu) * 1e6:6.1f} us/message CPU"
            )
    if not args.quick:
        print("peer: Channels 4.3 Worker + SyncConsumer, InMemoryChannelLayer")
        found = peer(max(2000, n // 5), args.pin)
        if found:
            for mode, rates in found.items():
                median = statistics.median(rates)
                ratio = table[(mode, "w1")] / median
                print(
                    f"  {mode:<34} {median:>9,.0f} msg/s  ({min(rates):,.0f}-{max(rates):,.0f})"
                    f"   csp-bus 1 thread / peer = {ratio:.1f}x"
                )


if __name__ == "__main__":
    main()
