"""The peer systems' virtualenv (``bench/.peers/venv``, gitignored), shared by benchmarks.

Peers (Channels 4, channels_redis, Daphne, uvicorn, hypercorn, gunicorn) run on asyncio or
Twisted, so they live in their own virtualenv and run in subprocesses: the csp-bus side of
every benchmark stays Trio-only. ``peer_python(["channels==4.3.2"])`` creates the venv once
(under a file lock, so concurrent benchmarks do not race) and installs what is missing.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

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
