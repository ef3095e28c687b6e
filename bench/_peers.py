"""Helpers shared by the benchmarks: the peers' virtualenv, local ports, a private
redis-server, and the CPU time of process trees.

The peer systems' virtualenv is ``bench/.peers/venv`` (gitignored).

Peers (Channels 4, channels_redis, Daphne, uvicorn, hypercorn, gunicorn) run on asyncio or
Twisted, so they live in their own virtualenv and run in subprocesses: the csp-bus side of
every benchmark stays Trio-only. ``peer_python(["channels==4.3.2"])`` creates the venv once
(under a file lock, so concurrent benchmarks do not race) and installs what is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

PEERS = Path(__file__).resolve().parent / ".peers"
VENV = PEERS / "venv"


def peer_python(requirements: Sequence[str]) -> Path:
    """Path to the peers' python, with ``requirements`` installed (pip specifiers)."""
    PEERS.mkdir(exist_ok=True)
    python = VENV / "bin" / "python"
    with open(PEERS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        stamp = PEERS / ".installed"
        have = set(stamp.read_text().split()) if stamp.exists() else set()
        missing = [req for req in requirements if req not in have]
        if missing:
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", *missing],
                check=True,
            )
            stamp.write_text("\n".join(sorted(have | set(missing))))
    return python


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[Any], limit: float = 60) -> None:
    """Return once something accepts connections on ``port``; raise if ``process`` exits
    first or ``limit`` seconds pass."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def taskset(core: int) -> list[str]:
    """The command prefix that pins a process to ``core`` (nothing where it cannot)."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > core:
        return ["taskset", "-c", str(core)]
    return []


@contextlib.contextmanager
def private_redis(core: int) -> Iterator[tuple[int, int]]:
    """A ``redis-server`` of the benchmark's own (no persistence) on a free port, pinned
    to ``core``; yields ``(port, pid)`` once it answers PING, stops it afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("this benchmark needs redis-server (apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="csp-bus-bench-redis-")
    process = subprocess.Popen(
        [*taskset(core), binary, "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the benchmark's redis-server did not start")
            time.sleep(0.05)
        yield port, process.pid  # taskset execs: the pid is redis-server's
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (gunicorn's workers, a reloader's child...)."""
    found = [pid]
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for kid in (task / "children").read_text().split():
                found.extend(process_tree(int(kid)))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of ``pids``, including their reaped children (0 for a pid
    that is gone)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")
