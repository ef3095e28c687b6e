"""The WebSocket load client of bench/websocket.py: one client for every server measured.

Runs in the peers' virtualenv (websockets 17.4 asyncio client on uvloop, compression and
client keep-alive pings off, as in shared/research/anchors.md section 4), pinned by the
caller to the core the servers do not use. Prints JSON lines on stdout.

    python ws_client.py echo URL [--connections 100] [--round-trips 200] [--warm-up 10]
    python ws_client.py idle URL [--connections 10000] [--concurrency 100]
        prints {"opened": ...} once every connection is open, waits for a line on stdin,
        then checks that every connection still echoes and prints {"alive": ...}
    python ws_client.py fanout URL [--connections 1000] [--broadcasts 20] [--warm-up 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

try:
    import uvloop
except ImportError:  # the figures then say "asyncio"
    uvloop = None
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

TEXT = "x" * 32  # 32-byte text frames


def emit(**figures) -> None:
    print(json.dumps(figures), flush=True)


async def open_one(url: str, stats: dict) -> object:
    """Open one connection; retry a 503 (the server's "busy, try again") a few times."""
    for attempt in range(20):
        try:
            return await connect(
                url,
                compression=None,
                ping_interval=None,
                open_timeout=60,
                close_timeout=1,
                max_queue=None,
            )
        except InvalidStatus as exc:
            if exc.response.status_code != 503 or attempt == 19:
                raise
            stats["retries"] += 1
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


async def open_many(url: str, count: int, concurrency: int) -> tuple[list, dict]:
    stats = {"retries": 0, "failed": 0, "errors": []}
    limit = asyncio.Semaphore(concurrency)
    connections: list = []

    async def one() -> None:
        async with limit:
            try:
                connections.append(await open_one(url, stats))
            except Exception as exc:  # counted and reported, never hidden
                stats["failed"] += 1
                if len(stats["errors"]) < 5:
                    stats["errors"].append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(one() for _ in range(count)))
    return connections, stats


async def close_all(connections: list) -> None:
    for connection in connections:
        connection.transport.abort()


async def echo(args: argparse.Namespace) -> None:
    connections, stats = await open_many(args.url, args.connections, args.connections)
    if stats["failed"]:
        emit(error=f"{stats['failed']} connections failed", details=stats["errors"])
        return

    async def round_trips(connection, count: int, latencies: list[float] | None) -> None:
        for _ in range(count):
            started = time.perf_counter()
            await connection.send(TEXT)
            answer = await connection.recv()
            if latencies is not None:
                latencies.append(time.perf_counter() - started)
            if answer != TEXT:
                raise RuntimeError(f"echo answered {answer!r}")

    await asyncio.gather(*(round_trips(c, args.warm_up, None) for c in connections))
    latencies: list[float] = []
    cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(round_trips(c, args.round_trips, latencies) for c in connections))
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    await close_all(connections)
    latencies.sort()
    emit(
        round_trips_per_s=len(latencies) / wall,
        p50_ms=1000 * latencies[len(latencies) // 2],
        p99_ms=1000 * latencies[int(len(latencies) * 0.99)],
        wall_s=wall,
        client_cpu=cpu / wall,
        retries=stats["retries"],
    )


async def idle(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    connections, stats = await open_many(args.url, args.connections, args.concurrency)
    emit(
        opened=len(connections),
        failed=stats["failed"],
        retries=stats["retries"],
        open_s=time.perf_counter() - started,
        errors=stats["errors"],
    )
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # the caller measured the RSS
    limit = asyncio.Semaphore(args.concurrency)
    alive = 0
    failures: dict[str, int] = {}

    async def check(connection) -> None:
        nonlocal alive
        async with limit:
            try:
                await connection.send(TEXT)
                if await asyncio.wait_for(connection.recv(), 60) == TEXT:
                    alive += 1
            except Exception as exc:  # counted as not alive, by reason
                reason = f"{type(exc).__name__}: {exc}"[:120]
                failures[reason] = failures.get(reason, 0) + 1

    await asyncio.gather(*(check(c) for c in connections))
    emit(alive=alive, failures=failures)
    await close_all(connections)


async def fanout(args: argparse.Namespace) -> None:
    connections, stats = await open_many(args.url, args.connections, args.concurrency)
    if stats["failed"]:
        emit(error=f"{stats['failed']} connections failed", details=stats["errors"])
        await close_all(connections)
        return
    await asyncio.sleep(1)  # memberships settle (they are added before the accept anyway)
    total = len(connections)
    arrivals: dict[str, list[float]] = {}
    complete: dict[str, asyncio.Event] = {}

    async def reader(connection) -> None:
        async for text in connection:
            now = time.perf_counter()
            seen = arrivals.setdefault(text, [])
            seen.append(now)
            if len(seen) == total and text in complete:
                complete[text].set()

    readers = [asyncio.create_task(reader(c)) for c in connections]
    rows = []
    incomplete = 0
    for index in range(args.warm_up + args.broadcasts):
        text = f"broadcast-{index:04d}"
        complete[text] = asyncio.Event()
        started = time.perf_counter()
        await connections[0].send(text)
        try:
            await asyncio.wait_for(complete[text].wait(), args.timeout)
        except TimeoutError:
            incomplete += index >= args.warm_up
            await asyncio.sleep(args.pause)
            continue
        if index >= args.warm_up:
            times = sorted(t - started for t in arrivals[text])
            rows.append((times[-1], times[0], times[len(times) // 2]))
        await asyncio.sleep(args.pause)
    for task in readers:
        task.cancel()
    await close_all(connections)
    if not rows:
        emit(error="no broadcast reached every client", incomplete=incomplete)
        return
    alls = sorted(r[0] for r in rows)
    emit(
        all_ms=1000 * statistics.median(alls),
        p90_ms=1000 * alls[min(len(alls) - 1, int(len(alls) * 0.9))],
        first_ms=1000 * statistics.median(r[1] for r in rows),
        median_member_ms=1000 * statistics.median(r[2] for r in rows),
        complete=len(rows),
        incomplete=incomplete,
        received_min=min(len(v) for k, v in arrivals.items() if k in complete),
        retries=stats["retries"],
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["echo", "idle", "fanout"])
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--round-trips", type=int, default=200)
    parser.add_argument("--warm-up", type=int, default=10)
    parser.add_argument("--broadcasts", type=int, default=20)
    parser.add_argument("--pause", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=10)
    args = parser.parse_args()
    run = {"echo": echo, "idle": idle, "fanout": fanout}[args.mode]
    if uvloop is not None:
        uvloop.run(run(args))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
