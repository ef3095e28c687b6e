"""A minimal Django view through csp-bus, beside gunicorn and Daphne + Channels 4, in one run.

    python bench/django.py                      # every system, 3 runs of 10 s each
    python bench/django.py --quick              # 1 run of 5 s (a smoke test)
    python bench/django.py --only csp-bus-redis --only daphne-channels

Method (as shared/research/anchors.md section 3): one Django project, DEBUG=False, no
apps, no middleware, no database, a sync view returning ``HttpResponse(b"Hello,
world!")``. Each system's processes are pinned to CPU 0 (``taskset -c 0``), ``wrk -t1
-c50`` to CPU 1; 3 s warm-up, then each run is ``-d10s``; the median and range of 3 runs
are printed, and ratios compare medians measured in this same run. Systems:

* ``gunicorn-sync-w2``: gunicorn sync workers, 2 processes (as many as csp-bus-redis);
* ``gunicorn-sync-w1``: 1 process (the anchor figure);
* ``daphne-channels``: Daphne + Channels 4 ``ProtocolTypeRouter`` around Django's ASGI app;
* ``csp-bus-redis``: ``csp-bus serve --adapter http`` + one ``manage.py runworker``
  process over ``redis://``, through a private ``redis-server`` (no persistence) that
  this script starts pinned to CPU 0 too: the Redis work each request costs is paid
  on the servers' core, as everything else of csp-bus (``--redis HOST:PORT`` uses an
  existing server instead, wherever it runs; its CPU is then not counted);
* ``csp-bus-embedded``: one process, ``csp-bus serve --adapter http --app
  csp_bus.adapters.django.project`` over ``memory://``.

Besides req/s, each row prints the CPU time the system's processes (every process of
its tree, plus the private Redis for ``csp-bus-redis``) used per request during the
measured runs: the figure load on the machine disturbs least. The issue's target
compares csp-bus with gunicorn running the *same number of processes*: the Redis mode
(server + worker) with ``gunicorn-sync-w2``, the embedded mode with ``gunicorn-sync-w1``.

csp-bus workers run 16 threads here (``--threads``; ``runworker``'s own default is 8):
with more requests in flight, a thread that finishes a view takes the next queued one
without sleeping, and the loops take several messages per wake-up (csp-bus-redis on this
machine, 5 back-to-back pairs: 8 threads 557-693 us of CPU per request in the server and
worker, 2.55 context switches per request in the worker; 16 threads 447-607 us, 1.88;
32 threads as 16).
gunicorn's sync workers have one thread each; Daphne runs Django's sync view in
asgiref's thread pool.

Peers run from their own virtualenv (bench/_peers.py); the csp-bus side from this one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import cpu_seconds, free_port, peer_python, private_redis, process_tree, taskset

PEERS = ["django==5.2.19", "channels==4.3.2", "daphne==4.2.3", "gunicorn"]
BODY = b"Hello, world!"

SETTINGS = """
DEBUG = False
SECRET_KEY = "bench-" + "x" * 50
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = []
MIDDLEWARE = []
DATABASES = {}
ROOT_URLCONF = "benchdj.urls"
USE_TZ = True
"""
URLS = """
from django.http import HttpResponse
from django.urls import path

def hello(request):
    return HttpResponse(b"Hello, world!")

urlpatterns = [path("", hello)]
"""
WSGI = """
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchdj.settings")
from django.core.wsgi import get_wsgi_application
application = get_wsgi_application()
"""
ASGI = """
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchdj.settings")
from django.core.asgi import get_asgi_application
django_app = get_asgi_application()
from channels.routing import ProtocolTypeRouter
application = ProtocolTypeRouter({"http": django_app})
"""


def write_project(root: Path) -> None:
    package = root / "benchdj"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text(SETTINGS)
    # csp-bus processes also install the app (for manage.py runworker); it adds no
    # middleware and no models, so the request path is the same.
    (package / "settings_csp.py").write_text(
        'from .settings import *\nINSTALLED_APPS = ["csp_bus.adapters.django"]\n'
    )
    (package / "urls.py").write_text(URLS)
    (package / "wsgi.py").write_text(WSGI)
    (package / "asgi.py").write_text(ASGI)


def wait_for(port: int, processes: list[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    """Until GET / answers the hello body (every process of the system is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            if data.startswith(b"HTTP/1.1 200") and BODY in data:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"nothing answered on port {port} within {timeout} s")


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wrk(port: int, seconds: int, connections: int) -> tuple[float, float, int]:
    """``(requests/s, p99 ms, errors)`` of one wrk run."""
    out = subprocess.run(
        [
            *taskset(1),
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99_match = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    p99 = 0.0
    if p99_match:
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99_match.group(2)]
        p99 = float(p99_match.group(1)) * scale
    errors = 0
    for found in re.finditer(r"(connect|read|write|timeout) (\d+)", out):
        errors += int(found.group(2))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return rate, p99, errors


def systems(peer: Path, port: int, redis_url: str, threads: int) -> dict[str, list[list[str]]]:
    csp = str(Path(sys.executable).with_name("csp-bus"))
    common = ["--adapter", "http", "--no-access-log", "--bind", f"127.0.0.1:{port}"]
    return {
        "gunicorn-sync-w1": [
            [str(peer), "-m", "gunicorn", "benchdj.wsgi:application", "-k", "sync", "-w", "1",
             "--log-level", "warning", "--backlog", "2048", "--bind", f"127.0.0.1:{port}"],
        ],
        "gunicorn-sync-w2": [
            [str(peer), "-m", "gunicorn", "benchdj.wsgi:application", "-k", "sync", "-w", "2",
             "--log-level", "warning", "--backlog", "2048", "--bind", f"127.0.0.1:{port}"],
        ],
        "daphne-channels": [
            [str(peer), "-m", "daphne", "-e",
             f"tcp:port={port}:interface=127.0.0.1:backlog=2048", "-v", "0",
             "benchdj.asgi:application"],
        ],
        "csp-bus-redis": [
            [csp, "serve", *common, "--layer", redis_url],
            [sys.executable, "-m", "django", "runworker", "--settings=benchdj.settings_csp",
             "--layer", redis_url, "--threads", str(threads)],
        ],
        "csp-bus-embedded": [
            [csp, "serve", *common, "--app", "csp_bus.adapters.django.project",
             "--threads", str(threads)],
        ],
    }  # fmt: skip


@contextlib.contextmanager
def running(
    commands: list[list[str]], env: dict[str, str], cwd: Path, log: Any
) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes = [
        subprocess.Popen(
            [*taskset(0), *command],
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        for command in commands
    ]
    try:
        yield processes
    finally:
        stop(processes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], help="run only this system")
    parser.add_argument("--quick", action="store_true", help="1 run of 5 s per system")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--threads", type=int, default=16, help="csp-bus worker threads (default 16)"
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get("CSP_BUS_BENCH_REDIS"),
        metavar="HOST:PORT",
        help="an existing Redis for csp-bus-redis (default: a private one pinned to CPU 0)",
    )
    args = parser.parse_args()
    runs, seconds = (1, 5) if args.quick else (3, 10)
    if not shutil.which("wrk"):
        sys.exit("bench/django.py needs wrk (apt-get install wrk)")
    peer = peer_python(PEERS)
    root = Path(tempfile.mkdtemp(prefix="csp-bus-bench-django-"))
    write_project(root)
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "benchdj.settings"
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    results: dict[str, list[tuple[float, float, int]]] = {}
    table = systems(peer, 0, "redis://", args.threads)
    names = args.only or list(table)
    where = f"Redis at {args.redis} (not pinned, not counted)" if args.redis else (
        "a private Redis on CPU 0 (counted)")  # fmt: skip
    print(f"Django hello view, wrk -t1 -c{args.connections} -d{seconds}s x {runs} runs, "
          f"servers on CPU 0, wrk on CPU 1, csp-bus worker threads {args.threads}, "
          f"csp-bus-redis through {where}")  # fmt: skip
    for name in names:
        port = free_port()
        log_path = root / f"{name}.log"
        with contextlib.ExitStack() as stack:
            log = stack.enter_context(log_path.open("w"))
            extra: list[int] = []
            address = args.redis
            if name == "csp-bus-redis" and not address:
                redis_port, redis_pid = stack.enter_context(private_redis(0))
                address, extra = f"127.0.0.1:{redis_port}", [redis_pid]
            redis_url = f"redis://{address}/0?prefix=benchdj{os.getpid()}"
            commands = systems(peer, port, redis_url, args.threads)[name]
            processes = stack.enter_context(running(commands, env, root, log))
            try:
                wait_for(port, [])
            except RuntimeError as exc:
                print(f"{name:18} failed to start: {exc}")
                print(log_path.read_text()[-3000:])
                continue
            pids = [process.pid for process in processes] + extra
            wrk(port, 3, args.connections)  # warm-up
            before = cpu_seconds([p for root in pids for p in process_tree(root)])
            results[name] = [wrk(port, seconds, args.connections) for _ in range(runs)]
            used = cpu_seconds([p for root in pids for p in process_tree(root)]) - before
        rates = [r for r, _, _ in results[name]]
        p99s = [p for _, p, _ in results[name]]
        errors = sum(e for _, _, e in results[name])
        served = sum(rates) * seconds
        print(
            f"{name:18} {statistics.median(rates):>8,.0f} req/s "
            f"({min(rates):,.0f}-{max(rates):,.0f})  p99 {statistics.median(p99s):7.1f} ms"
            f"  errors {errors}  CPU {used / served * 1e6 if served else 0:5.0f} us/req",
            flush=True,
        )
    medians = {name: statistics.median(r for r, _, _ in rows) for name, rows in results.items()}
    # Other processes on CPU 0 take a share of it, and the scheduler shares a contended
    # core per thread: on a busy machine a many-threaded server gets more of CPU 0 than
    # a single-threaded one. Compare figures only from a quiet machine.
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\nload average at the end: {load} (on {os.cpu_count()} CPUs)")
    # The target: at least 2x Daphne + Channels 4 and at least 70% of gunicorn
    # with the same number of processes.
    same_processes = {"csp-bus-redis": "gunicorn-sync-w2", "csp-bus-embedded": "gunicorn-sync-w1"}
    for ours, same in same_processes.items():
        if ours not in medians:
            continue
        for peer_name in ("daphne-channels", "gunicorn-sync-w2", "gunicorn-sync-w1"):
            if peer_name in medians:
                ratio = medians[ours] / medians[peer_name]
                print(f"{ours} / {peer_name}: {ratio:.2f}x")
        if "daphne-channels" in medians and same in medians:
            met = (
                medians[ours] >= 2 * medians["daphne-channels"]
                and medians[ours] >= 0.7 * medians[same]
            )
            print(f"{ours}: target (>= 2x daphne-channels, >= 0.70x {same}) "
                  f"{'met' if met else 'NOT met'}")  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
