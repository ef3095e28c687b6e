"""WebSocket benchmarks: csp-bus beside Daphne + Channels 4 and uvicorn, in one run.

    python bench/websocket.py                        # echo, idle memory, fan-out; 3 runs each
    python bench/websocket.py --part echo --runs 1   # one part, one run (a smoke test)
    python bench/websocket.py --only csp-bus-sync --only daphne-channels-sync

Three figures (issue 6), each measured for every system in this same run:

1. **Echo**: 100 connections x 200 sequential round trips of a 32-byte text frame
   (10 warm-up round trips per connection first); round trips/s = 20,000 / wall time,
   p50/p99 of the round-trip latency. Sync against sync: ``csp-bus-sync`` (plain consumer
   functions in worker threads) vs ``daphne-channels-sync`` (Channels 4
   ``WebsocketConsumer``); async against async: ``csp-bus-async`` (``async def``
   consumers on the worker's Trio loop) vs ``daphne-channels-async``
   (``AsyncWebsocketConsumer``); ``uvicorn-wsproto`` serving a raw ASGI echo app is the
   bar to chase. csp-bus runs the whole path in one process (``csp-bus serve --adapter
   websocket --app``, memory:// layer, embedded workers), as Daphne does.
2. **Idle memory**: 10,000 connections opened to one server process (handshake
   concurrency 100); RSS after (3 s after the last handshake) minus RSS before (after a
   warm-up), divided by the connections opened; then every connection must still echo.
3. **Fan-out**: 1,000 clients in one group; client 0 sends a frame, the consumer
   ``send_group``s it; the time from the send until all 1,000 clients have it (2 warm-up
   broadcasts, 20 measured 0.2 s apart, median per run). csp-bus over ``redis://`` vs
   Channels 4 + channels_redis under Daphne, both on the same redis-server (started here,
   pinned with the servers, FLUSHALL and a fresh server per run).

Method (shared/research/anchors.md): servers (and redis-server) pinned to CPU 0 with
``taskset``, the client to CPU 1; the same client for every system
(``bench/peers/ws_client.py``: websockets 17.4 on uvloop, compression and keep-alive pings
off); ``--runs`` runs (default 3), median (min-max); ratios compare medians of this run.
"srv CPU" is the server's CPU use during the runs (1.00 = its core saturated), "foreign"
the CPU other processes used meanwhile (cores): the machine is shared, so a busy window
lowers every figure; before each window the script waits (up to 20 s) for the machine to
be quiet. Peers run from their own virtualenv (bench/_peers.py). Figures measured so far,
with profiles of where the time and the memory go: bench/peers/ws_results.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _peers import (  # noqa: E402
    cpu_seconds,
    free_port,
    peer_python,
    private_redis,
    wait_port,
)
from _peers import process_tree as tree  # noqa: E402

PEER_DIR = HERE / "peers"
CLIENT = PEER_DIR / "ws_client.py"
PEER_REQUIREMENTS = [
    "channels==4.3.2",
    "channels-redis==4.3.0",
    "redis==8.1.0",
    "daphne==4.2.3",
    "django==5.2.19",
    "uvicorn==0.54.0",
    "httptools==0.9.0",
    "uvloop==0.23.0",
    "websockets==17.4",
    "wsproto==1.3.2",
]
SERVER_CORE, CLIENT_CORE = "0", "1"

# Targets of issue 6.
ECHO_RATIO_TARGET = 2.0
IDLE_KIB_TARGET = 20.0
FANOUT_RATIO_TARGET = 3.0


# ----------------------------------------------------------------------- process helpers


def taskset(core: str, command: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", core, *command]
    return command


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def machine_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores)."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_quiet(ours: list[int], limit: float = 20, threshold: float = 0.3) -> float:
    """Wait until processes not ours use under ``threshold`` cores; return that load."""
    deadline = time.monotonic() + limit
    while True:
        machine, mine = machine_seconds(), cpu_seconds(ours)
        time.sleep(1)
        load = (machine_seconds() - machine) - (cpu_seconds(ours) - mine)
        if load < threshold or time.monotonic() > deadline:
            if load >= threshold:
                print(f"  (machine still busy: {load:.2f} cores of others)", file=sys.stderr)
            return load


@dataclass
class Server:
    name: str
    command: list[str]
    path: str = "/"
    env: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def running(server: Server) -> Iterator[tuple[str, list[int]]]:
    """Start ``server`` on a free port pinned to the server core: (ws URL, its pids)."""
    port = free_port()
    command = taskset(SERVER_CORE, [part.replace("{port}", str(port)) for part in server.command])
    env = {**os.environ, "PYTHONPATH": str(PEER_DIR), **server.env}
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        command, cwd=PEER_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
    )
    try:
        wait_port(port, process)
        yield f"ws://127.0.0.1:{port}{server.path}", tree(process.pid)
        if process.poll() is not None:  # it died during the run: say how, with its log
            raise RuntimeError(f"{server.name} exited with {process.returncode} during the run")
    except BaseException:
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace")[-3000:])
        raise
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def client(python: Path, mode: str, url: str, *options: str) -> dict[str, Any]:
    """Run the load client once; its last JSON line."""
    result = subprocess.run(
        taskset(CLIENT_CORE, [str(python), str(CLIENT), mode, url, *options]),
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"client {mode} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(lines[-1])
    if "error" in figures:
        raise RuntimeError(f"client {mode} against {url}: {figures}")
    return figures


@dataclass
class Window:
    """CPU accounting over one measured client run."""

    server: list[int]
    extra: list[int] = field(default_factory=list)  # other processes of ours (redis-server)

    def __enter__(self) -> Window:
        self.started = time.monotonic()
        self.machine = machine_seconds()
        self.server_cpu0 = cpu_seconds(self.server)
        self.extra_cpu0 = cpu_seconds(self.extra)
        self.client0 = children_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.monotonic() - self.started
        self.server_cpu = (cpu_seconds(self.server) - self.server_cpu0) / elapsed
        client = children_seconds() - self.client0
        extra = cpu_seconds(self.extra) - self.extra_cpu0
        busy = machine_seconds() - self.machine
        self.foreign = max(0.0, (busy - client - extra) / elapsed - self.server_cpu)


def fmt(values: list[float], spec: str) -> str:
    return f"{statistics.median(values):{spec}} ({min(values):{spec}}-{max(values):{spec}})"


def median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


# ------------------------------------------------------------------------------ systems


def csp_server(name: str, app: str, *extra: str) -> Server:
    return Server(
        name,
        [
            sys.executable,
            "-m",
            "csp_bus",
            "serve",
            "--adapter",
            "websocket",
            "--app",
            f"ws_csp_app:{app}",
            "--bind",
            "127.0.0.1:{port}",
            "--no-access-log",
            "--backlog",
            "2048",
            "--max-connections",
            "20000",
            *extra,
        ],
        "/",
    )


def daphne_server(name: str, path: str, env: dict[str, str] | None = None) -> Server:
    return Server(
        name,
        [
            str(PEER_BIN / "daphne"),
            "-e",
            "tcp:port={port}:interface=127.0.0.1:backlog=2048",
            "-v",
            "0",
            "ws_channels_app:application",
        ],
        path,
        env or {},
    )


def uvicorn_server() -> Server:
    return Server(
        "uvicorn-wsproto",
        [
            str(PEER_BIN / "uvicorn"),
            "ws_raw_asgi:app",
            "--http",
            "httptools",
            "--loop",
            "uvloop",
            "--lifespan",
            "on",
            "--ws",
            "wsproto",
            "--host",
            "127.0.0.1",
            "--no-access-log",
            "--log-level",
            "warning",
            "--backlog",
            "2048",
            "--port",
            "{port}",
        ],
    )


PEER_BIN = Path()  # set in main() once the peers' venv exists


# ---------------------------------------------------------------------------- the parts


def part_echo(args: argparse.Namespace, python: Path) -> dict[str, list[dict[str, Any]]]:
    servers = [
        csp_server("csp-bus-sync", "echo_sync"),
        csp_server("csp-bus-async", "echo_async"),
        daphne_server("daphne-channels-sync", "/echo-sync/"),
        daphne_server("daphne-channels-async", "/echo-async/"),
        uvicorn_server(),
    ]
    results: dict[str, list[dict[str, Any]]] = {}
    for server in servers:
        if args.only and server.name not in args.only:
            continue
        print(f"echo: {server.name} ...", file=sys.stderr, flush=True)
        with running(server) as (url, pids):
            client(python, "echo", url, "--round-trips", "20")  # warm-up
            rows = []
            for _ in range(args.runs):
                for attempt in range(3):
                    wait_quiet(pids)
                    try:
                        with Window(pids) as window:
                            row = client(python, "echo", url)
                        break
                    except RuntimeError as exc:  # a peer refusing handshakes under load
                        print(f"  run failed (attempt {attempt + 1}): {exc}", file=sys.stderr)
                else:
                    continue
                row.update(
                    server_cpu=window.server_cpu, foreign=window.foreign, failed_attempts=attempt
                )
                rows.append(row)
                print(f"  {row['round_trips_per_s']:,.0f} rt/s", file=sys.stderr, flush=True)
        results[server.name] = rows
    return results


def part_idle(args: argparse.Namespace, python: Path) -> dict[str, list[dict[str, Any]]]:
    servers = [
        csp_server("csp-bus-sync", "echo_sync"),
        daphne_server("daphne-channels-async", "/echo-async/"),
        uvicorn_server(),
    ]
    results: dict[str, list[dict[str, Any]]] = {}
    for server in servers:
        if args.only and server.name not in args.only:
            continue
        if server.name != "csp-bus-sync" and not args.idle_peers:
            continue
        print(f"idle x{args.idle}: {server.name} ...", file=sys.stderr, flush=True)
        rows = []
        for _ in range(args.runs):
            with running(server) as (url, pids):
                client(python, "echo", url, "--round-trips", "20")  # warm-up: 100 conns
                time.sleep(1)
                wait_quiet(pids)
                before = rss_bytes(tree(pids[0]))
                process = subprocess.Popen(
                    taskset(
                        CLIENT_CORE,
                        [str(python), str(CLIENT), "idle", url, "--connections", str(args.idle)],
                    ),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert process.stdin is not None and process.stdout is not None
                opened = json.loads(process.stdout.readline() or "{}")
                time.sleep(3)
                after = rss_bytes(tree(pids[0]))
                process.stdin.write("go\n")
                process.stdin.flush()
                alive = json.loads(process.stdout.readline() or '{"alive": 0}')
                process.wait(120)
            count = opened.get("opened", 0)
            row = {
                **opened,
                **alive,
                "rss_before_mib": before / 2**20,
                "rss_after_mib": after / 2**20,
                "kib_per_connection": (after - before) / 1024 / count if count else float("nan"),
            }
            rows.append(row)
            print(
                f"  opened {count}, alive {row['alive']}, {row['kib_per_connection']:.1f} KiB each",
                file=sys.stderr,
                flush=True,
            )
        results[server.name] = rows
    return results


def flushall(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        if not sock.recv(64).startswith(b"+OK"):
            raise RuntimeError("FLUSHALL failed")


def part_fanout(args: argparse.Namespace, python: Path) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {}
    with private_redis(int(SERVER_CORE)) as (port, redis_pid):
        redis_pids = tree(redis_pid)
        layer = f"redis://127.0.0.1:{port}/0"
        if args.fanout_capacity:
            layer += f"?channel_capacity=websocket.send*:{args.fanout_capacity}"
        servers = [
            csp_server("csp-bus-sync-redis", "group_sync", "--layer", layer),
            csp_server("csp-bus-async-redis", "group_async", "--layer", layer),
            daphne_server(
                "daphne-channels-redis",
                "/group/",
                {"CHANNEL_LAYER": "redis", "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port)},
            ),
        ]
        for server in servers:
            if args.only and server.name not in args.only:
                continue
            print(f"fan-out x{args.fanout}: {server.name} ...", file=sys.stderr, flush=True)
            rows = []
            for _ in range(args.runs):
                for attempt in range(3):
                    flushall(port)
                    try:
                        with running(server) as (url, pids):
                            wait_quiet(pids + redis_pids)
                            with Window(pids, redis_pids) as window:
                                row = client(
                                    python,
                                    "fanout",
                                    url,
                                    "--connections",
                                    str(args.fanout),
                                    "--warm-up",
                                    "2",
                                    "--broadcasts",
                                    "20",
                                )
                            row.update(server_cpu=window.server_cpu, foreign=window.foreign)
                        break
                    except RuntimeError as exc:
                        print(f"  run failed (attempt {attempt + 1}): {exc}", file=sys.stderr)
                else:
                    continue
                row["failed_attempts"] = attempt
                rows.append(row)
                print(
                    f"  all {row['all_ms']:.1f} ms, complete {row['complete']}/20",
                    file=sys.stderr,
                    flush=True,
                )
            results[server.name] = rows
    return results


# ------------------------------------------------------------------------------ reports


def report_echo(results: dict[str, list[dict[str, Any]]], runs: int) -> None:
    print(
        f"\n## Echo: 100 connections x 200 sequential round trips, 32-byte text; {runs} run(s), "
        "median (min-max)\n"
    )
    print("| server | round trips/s | p50 ms | p99 ms | srv CPU | client CPU | foreign |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        if not rows:
            print(f"| {name} | every run failed (see stderr) | | | | | |")
            continue
        failed = sum(r["failed_attempts"] for r in rows)
        retried = f" (+{failed} failed runs)" if failed else ""
        print(
            f"| {name}{retried} | {fmt([r['round_trips_per_s'] for r in rows], ',.0f')} "
            f"| {fmt([r['p50_ms'] for r in rows], '.2f')} "
            f"| {fmt([r['p99_ms'] for r in rows], '.2f')} "
            f"| {median(rows, 'server_cpu'):.2f} | {median(rows, 'client_cpu'):.2f} "
            f"| {max(r['foreign'] for r in rows):.2f} |"
        )
    print()
    for ours, theirs in (
        ("csp-bus-sync", "daphne-channels-sync"),
        ("csp-bus-async", "daphne-channels-async"),
    ):
        if results.get(ours) and results.get(theirs):
            ratio = median(results[ours], "round_trips_per_s") / median(
                results[theirs], "round_trips_per_s"
            )
            verdict = "OK" if ratio >= ECHO_RATIO_TARGET else "BELOW TARGET"
            print(
                f"- {ours} / {theirs}: {ratio:.2f}x round trips/s, p99 "
                f"{median(results[ours], 'p99_ms'):.1f} vs {median(results[theirs], 'p99_ms'):.1f}"
                f" ms (target >= {ECHO_RATIO_TARGET:g}x: {verdict})"
            )
        if results.get(ours) and results.get("uvicorn-wsproto"):
            ratio = median(results[ours], "round_trips_per_s") / median(
                results["uvicorn-wsproto"], "round_trips_per_s"
            )
            print(f"- {ours} / uvicorn-wsproto (the bar): {ratio:.2f}x round trips/s")


def report_idle(results: dict[str, list[dict[str, Any]]], runs: int, count: int) -> None:
    print(f"\n## Idle connections: {count:,} to one server process; {runs} run(s)\n")
    print(
        "| server | opened (min) | alive (min) | 503 retries | RSS before MiB | RSS after MiB "
        "| KiB per connection | open time s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        print(
            f"| {name} | {min(r['opened'] for r in rows)} | {min(r['alive'] for r in rows)} "
            f"| {max(r['retries'] for r in rows)} "
            f"| {fmt([r['rss_before_mib'] for r in rows], '.1f')} "
            f"| {fmt([r['rss_after_mib'] for r in rows], '.1f')} "
            f"| {fmt([r['kib_per_connection'] for r in rows], '.2f')} "
            f"| {fmt([r['open_s'] for r in rows], '.2f')} |"
        )
    if "csp-bus-sync" in results:
        rows = results["csp-bus-sync"]
        kib = median(rows, "kib_per_connection")
        every = all(r["opened"] == count and r["alive"] == count for r in rows)
        verdict = "OK" if kib <= IDLE_KIB_TARGET and every else "BELOW TARGET"
        print(
            f"\n- csp-bus: {kib:.2f} KiB per idle connection, all {count:,} connected and alive: "
            f"{every} (target <= {IDLE_KIB_TARGET:g} KiB, all connect: {verdict})"
        )


def report_fanout(results: dict[str, list[dict[str, Any]]], runs: int, count: int) -> None:
    print(
        f"\n## Fan-out: one send_group to {count:,} connected clients over redis://; "
        f"{runs} run(s) of 20 broadcasts, median (min-max)\n"
    )
    print(
        "| server + layer | send -> all received ms | p90 ms | -> first ms | -> median ms "
        "| complete | srv CPU | foreign |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        if not rows:
            print(f"| {name} | every run failed (see stderr) | | | | | | |")
            continue
        failed = sum(r["failed_attempts"] for r in rows)
        retried = f" (+{failed} failed runs)" if failed else ""
        print(
            f"| {name} | {fmt([r['all_ms'] for r in rows], '.1f')} "
            f"| {fmt([r['p90_ms'] for r in rows], '.1f')} "
            f"| {fmt([r['first_ms'] for r in rows], '.1f')} "
            f"| {fmt([r['median_member_ms'] for r in rows], '.1f')} "
            f"| {sum(r['complete'] for r in rows)}/{20 * len(rows)}{retried} "
            f"| {median(rows, 'server_cpu'):.2f} | {max(r['foreign'] for r in rows):.2f} |"
        )
    theirs = results.get("daphne-channels-redis")
    if theirs:
        rows_ok = {name: rows for name, rows in results.items() if rows}
        results = rows_ok
        print()
        for name, rows in results.items():
            if name.startswith("csp-bus"):
                ratio = median(theirs, "all_ms") / median(rows, "all_ms")
                verdict = "OK" if ratio >= FANOUT_RATIO_TARGET else "BELOW TARGET"
                print(
                    f"- {name}: {ratio:.2f}x faster than daphne-channels-redis "
                    f"(target >= {FANOUT_RATIO_TARGET:g}x: {verdict})"
                )


def raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--part", action="append", choices=["echo", "idle", "fanout"], help="(repeatable)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", action="append", default=[], help="system names (repeatable)")
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections")
    parser.add_argument(
        "--idle-peers", action="store_true", help="also measure the peers' idle memory"
    )
    parser.add_argument("--fanout", type=int, default=1000, help="clients in the group")
    parser.add_argument(
        "--fanout-capacity",
        type=int,
        default=0,
        help="csp-bus layer URL channel_capacity for websocket.send* in the fan-out part "
        "(default 0: the layer's default capacity)",
    )
    parser.add_argument("--json", type=Path, help="also write every raw figure here")
    args = parser.parse_args()
    parts = args.part or ["echo", "idle", "fanout"]
    # SIGTERM unwinds like Ctrl-C: the servers and redis-server started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    limit = raise_fd_limit(args.idle * 2 + 1000)  # inherited by the server and the client
    if "idle" in parts and limit < args.idle + 100:
        print(f"ulimit -n is {limit}: too low for {args.idle} connections", file=sys.stderr)
        return 2
    python = peer_python(PEER_REQUIREMENTS)
    global PEER_BIN
    PEER_BIN = python.parent
    with contextlib.suppress(OSError):
        print(f"load average before: {os.getloadavg()}", file=sys.stderr)

    results: dict[str, Any] = {}
    if "echo" in parts:
        results["echo"] = part_echo(args, python)
    if "idle" in parts:
        results["idle"] = part_idle(args, python)
    if "fanout" in parts:
        results["fanout"] = part_fanout(args, python)

    print("\n# csp-bus WebSocket benchmarks (servers and redis on CPU 0, the client on CPU 1)")
    if "echo" in results:
        report_echo(results["echo"], args.runs)
    if "idle" in results:
        report_idle(results["idle"], args.runs, args.idle)
    if "fanout" in results:
        report_fanout(results["fanout"], args.runs, args.fanout)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
