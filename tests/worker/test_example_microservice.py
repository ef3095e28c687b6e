"""examples/microservice: the service (embedded workers + delay service) and the cron
script, as real processes on Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "microservice"


@pytest.mark.redis
def test_microservice_and_cron(redis_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "CSP_BUS_LAYER": redis_url, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "service.log"
    with log.open("wb") as sink:
        service = subprocess.Popen(
            [sys.executable, str(EXAMPLE / "service.py")], stderr=sink, stdout=sink, env=env
        )
    try:
        deadline = time.monotonic() + 20
        while "microservice ready" not in log.read_text():
            assert service.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)

        def cron(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, str(EXAMPLE / "cron.py"), *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )

        assert cron("eu-west", "A-17", "12.5").returncode == 0
        assert cron("eu-west", "A-18", "7.5").returncode == 0
        deadline = time.monotonic() + 10
        while True:
            report = cron("--report")
            assert report.returncode == 0, report.stdout + report.stderr
            figures = json.loads(report.stdout)
            if figures["orders"].get("eu-west") == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert figures == {"orders": {"eu-west": 2}, "totals": {"eu-west": 20.0}}
        # The delayed payment checks arrive about 2 s after each order.
        deadline = time.monotonic() + 10
        while log.read_text().count("checking the payment") < 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        service.send_signal(signal.SIGTERM)
        assert service.wait(20) == 0
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(10)
