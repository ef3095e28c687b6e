"""Helpers shared by the benchmarks: the peers' virtualenv and local ports.

The peer systems' virtualenv is ``bench/.peers/venv`` (gitignored).

Peers (Channels 4, channels_redis, Daphne, uvicorn, hypercorn, gunicorn) run on asyncio or
Twisted, so they live in their own virtualenv and run in subprocesses: the csp-bus side of
every benchmark stays Trio-only. ``peer_python(["channels==4.3.2"])`` creates the venv once
(under a file lock, so concurrent benchmarks do not race) and installs what is missing.
"""

from __future__ import annotations

import fcntl
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
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
