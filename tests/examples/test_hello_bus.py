"""The README's demo and the docs' examples run as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_hello_bus_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "hello_bus.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "average from the worker thread: 20.33 C" in result.stdout
    assert "screen got 'door open'" in result.stdout
    assert "is full (capacity 5)" in result.stdout
