"""HTTP hello-world throughput and latency: csp-bus beside Daphne, hypercorn and uvicorn.

    python bench/http.py                       # every server, 3 runs of 5 s at -c50
    python bench/http.py --only csp-bus-sync --duration 3 --runs 1

csp-bus runs the full path in one process: server -> memory:// layer -> embedded
worker -> consumer -> reply_channel -> server (``csp-bus serve --app``), once with a
plain sync consumer (runs in a worker thread, the normal case) and once with an
``async def`` consumer (runs on the worker's Trio loop). The peers serve the equivalent
minimal raw ASGI app (13-byte body) from their own virtualenv (bench/_peers.py).

Method (shared/research/anchors.md): every server is pinned to CPU 0 and wrk to CPU 1
(taskset), access logs are off everywhere, backlogs are 2048; after a 2 s warm-up,
``wrk -t1 -c50 -dNs --latency`` runs ``--runs`` times against the same server instance;
tables show the median (min-max). "srv CPU" is the server's CPU use during the runs
(1.00 = its core saturated) and "CPU us/req" the server CPU time per request, the figure
least disturbed by a busy machine; "foreign" is the CPU other processes used meanwhile
(in cores): a busy machine makes every other figure lower, so compare rows of one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

# This file is named http.py: keep its folder off sys.path so that "import http" (the
# standard library) is never this script, and load the shared peers helper by path.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
_spec = importlib.util.spec_from_file_location("_peers", HERE / "_peers.py")
assert _spec is not None and _spec.loader is not None
_peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_peers)
peer_python = _peers.peer_python
free_port = _peers.free_port
wait_port = _peers.wait_port

ROOT = Path(__file__).resolve().parent.parent
PEER_REQUIREMENTS = ["daphne==4.2.3", "hypercorn[trio]==0.18.0", "uvicorn==0.54.0"]

RAW_ASGI = textwrap.dedent(
    """
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        })
        await send({"type": "http.response.body", "body": b"Hello, world!"})
    """
)

CSP_APP = textwrap.dedent(
    """
    from csp_bus.routing import route

    RESPONSE = {
        "status": 200,
        "headers": [[b"content-type", b"text/plain"]],
        "content": b"Hello, world!",
    }

    def hello(message):
        message.reply_channel.send(RESPONSE)

    async def hello_async(message):
        await message.reply_channel.asend(RESPONSE)

    sync_app = [route("http.request", hello)]
    async_app = [route("http.request", hello_async)]
    """
)


@dataclass
class Run:
    rps: float
    p50: float
    p99: float
    errors: int
    server_cpu: float
    foreign: float


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


def _ms(text: str) -> float:
    found = re.match(r"[\d.]+", text)
    if found is None:
        return float("nan")
    value = float(found.group())
    if text.endswith("us"):
        return value / 1000
    if text.endswith("ms"):
        return value
    return value * 1000  # seconds


def process_cpu(pids: list[int]) -> float:
    """CPU seconds used so far by these processes (and their reaped children)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> float:
    """CPU seconds used by the whole machine so far (all cores, not idle)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(x) for x in fields]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids = (task / "children").read_text().split()
            for kid in kids:
                found.extend(children(int(kid)))
    except OSError:
        pass
    return found


def wrk(port: int, seconds: float, connections: int, server_pids: list[int], nice: int = 0) -> Run:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    if shutil.which("taskset"):
        command = ["taskset", "-c", "1", *command]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    before_server = process_cpu(server_pids)
    before_all = machine_cpu()
    started = time.monotonic()
    result = subprocess.run(
        [*command, f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True
    )
    elapsed = time.monotonic() - started
    server_cpu = (process_cpu(server_pids) - before_server) / elapsed
    out = result.stdout
    if "Latency Distribution" not in out:
        raise RuntimeError(f"wrk gave no figures:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if found := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(found.group(1))
    if found := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(x) for x in found.groups())
    # wrk itself used about 0.1-0.5 of a core; count it as ours, not foreign.
    total = (machine_cpu() - before_all) / elapsed
    wrk_cpu = 0.5 * min(1.0, rps / 20000) + 0.05
    foreign = max(0.0, total - server_cpu - wrk_cpu)
    return Run(rps, p50, p99, errors, server_cpu, foreign)


def start(server: Server, workdir: Path, nice: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [part.replace("{port}", str(port)) for part in server.command]
    if shutil.which("taskset"):
        command = ["taskset", "-c", "0", *command]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    env = {**os.environ, "PYTHONPATH": str(workdir), **server.env}
    process = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_port(port, process)
    return process, port


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def quiet_window(limit: float, patience: float) -> float:
    """Wait (up to ``patience`` s) for a 1 s window in which the machine uses less than
    ``limit`` cores; return the load of the last window seen."""
    deadline = time.monotonic() + patience
    while True:
        before = machine_cpu()
        time.sleep(1)
        load = machine_cpu() - before
        if load < limit or time.monotonic() > deadline:
            return load


def measure_all(
    servers: list[Server], args: argparse.Namespace, workdir: Path
) -> dict[str, list[Run]]:
    """Every server is started once and idles while the others are measured; the runs
    go round-robin (run 1 of each, then run 2...) so that a noisy moment on a shared
    machine does not fall on one server only."""
    started: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    results: dict[str, list[Run]] = {server.name: [] for server in servers}
    try:
        for server in servers:
            started[server.name] = start(server, workdir, args.nice)
            process, port = started[server.name]
            wrk(port, 2, args.connections, children(process.pid), args.nice)  # warm-up
        for run in range(args.runs):
            for server in servers:
                process, port = started[server.name]
                load = quiet_window(args.quiet, args.patience)
                print(
                    f"run {run + 1}: {server.name} (machine load before: {load:.2f} cores)",
                    file=sys.stderr,
                    flush=True,
                )
                results[server.name].append(
                    wrk(port, args.duration, args.connections, children(process.pid), args.nice)
                )
    finally:
        for process, _ in started.values():
            stop(process)
    return results


def fmt(values: list[float], spec: str) -> str:
    mid = statistics.median(values)
    return f"{mid:{spec}} ({min(values):{spec}}-{max(values):{spec}})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.3,
        help="before each run, wait for a second where the machine uses fewer cores",
    )
    parser.add_argument(
        "--patience", type=float, default=20, help="seconds to wait for such a quiet second"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run every server and wrk at this niceness (e.g. -10, as root) so that on a "
        "machine busy with other work each server still gets its core; all servers get "
        "the same treatment",
    )
    parser.add_argument(
        "--only", action="append", default=[], help="server names to run (repeatable)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    peers = peer_python(PEER_REQUIREMENTS).parent
    csp = [sys.executable, "-m", "csp_bus", "serve", "--bind", "127.0.0.1:{port}"]
    csp += ["--no-access-log", "--backlog", "2048"]
    servers = [
        Server("csp-bus-sync", [*csp, "--app", "bench_http_app:sync_app"]),
        Server("csp-bus-async", [*csp, "--app", "bench_http_app:async_app"]),
        Server(
            "daphne",
            [
                str(peers / "daphne"),
                "-e",
                "tcp:port={port}:interface=127.0.0.1:backlog=2048",
                "-v",
                "0",
                "raw_asgi:app",
            ],
        ),
        Server(
            "hypercorn-trio",
            [
                str(peers / "hypercorn"),
                "raw_asgi:app",
                "--worker-class",
                "trio",
                "--workers",
                "1",
                "--backlog",
                "2048",
                "--bind",
                "127.0.0.1:{port}",
            ],
        ),
        Server(
            "uvicorn-h11",
            [
                str(peers / "uvicorn"),
                "raw_asgi:app",
                "--http",
                "h11",
                "--loop",
                "asyncio",
                "--lifespan",
                "on",
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
        ),
    ]
    if args.only:
        servers = [s for s in servers if s.name in args.only]
    with tempfile.TemporaryDirectory(prefix="csp-bus-bench-http-") as tmp:
        workdir = Path(tmp)
        (workdir / "raw_asgi.py").write_text(RAW_ASGI)
        (workdir / "bench_http_app.py").write_text(CSP_APP)
        results = measure_all(servers, args, workdir)

    print(
        f"\nHTTP hello world, wrk -t1 -c{args.connections} -d{args.duration:g}s, "
        f"{args.runs} run(s), server on CPU 0, wrk on CPU 1"
        + (f", nice {args.nice}" if args.nice else "")
        + "; median (min-max)\n"
    )
    header = (
        f"{'server':<15} {'req/s':>24} {'p50 ms':>20} {'p99 ms':>22} "
        f"{'errors':>6} {'srv CPU':>7} {'CPU us/req':>10} {'foreign':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, runs in results.items():
        print(
            f"{name:<15} {fmt([r.rps for r in runs], ',.0f'):>24} "
            f"{fmt([r.p50 for r in runs], '.2f'):>20} {fmt([r.p99 for r in runs], '.2f'):>22} "
            f"{sum(r.errors for r in runs):>6} "
            f"{statistics.median(r.server_cpu for r in runs):>7.2f} "
            f"{statistics.median(r.server_cpu / r.rps * 1e6 for r in runs if r.rps):>10.0f} "
            f"{max(r.foreign for r in runs):>7.2f}"
        )
    print(
        "\nreference (shared/research/anchors.md, a quiet machine, -c50): daphne 3,936 req/s "
        "(p99 86 ms), hypercorn-trio 1,296 (p99 67 ms), uvicorn-h11 4,807 on asyncio (p99 17 ms)"
    )
    if "daphne" in results:
        daphne = statistics.median(r.rps for r in results["daphne"])
        daphne_p99 = statistics.median(r.p99 for r in results["daphne"])
        print()
        for name, runs in results.items():
            if name.startswith("csp-bus"):
                rps = statistics.median(r.rps for r in runs)
                p99 = statistics.median(r.p99 for r in runs)
                verdict = "OK" if rps >= daphne and p99 < daphne_p99 else "below target"
                print(
                    f"{name} / daphne: {rps / daphne:.2f}x req/s, p99 {p99:.1f} vs "
                    f"{daphne_p99:.1f} ms -> {verdict}"
                )
    if "uvicorn-h11" in results:
        uvicorn = statistics.median(r.rps for r in results["uvicorn-h11"])
        for name, runs in results.items():
            if name.startswith("csp-bus"):
                rps = statistics.median(r.rps for r in runs)
                print(f"{name} / uvicorn-h11 (the bar to chase): {rps / uvicorn:.2f}x req/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
