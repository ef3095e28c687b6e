"""Fixtures shared by the whole suite.

``redis_url``: the machine's Redis at 127.0.0.1:6379 when it answers; otherwise a
``redis-server`` this session starts on a free port; a clear skip only when no
``redis-server`` binary exists. Each test gets its own database-free key prefix, so
tests never see each other's keys.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server() -> Iterator[tuple[str, int]]:
    """``(host, port)`` of a Redis server the tests may use and flush keys on."""
    wanted = os.environ.get("CSP_BUS_TEST_REDIS", "127.0.0.1:6379")
    host, _, port = wanted.rpartition(":")
    if _answers(host, int(port)):
        yield host, int(port)
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no Redis answers at 127.0.0.1:6379 and no redis-server binary is installed")
    port_number = _free_port()
    workdir = tempfile.mkdtemp(prefix="csp-bus-redis-")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port_number),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _answers("127.0.0.1", port_number):
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail("the redis-server started for the tests did not answer")
            time.sleep(0.05)
        yield "127.0.0.1", port_number
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: tuple[str, int], request: pytest.FixtureRequest) -> str:
    """A ``redis://`` URL with a key prefix unique to this test."""
    host, port = redis_server
    prefix = "t" + format(abs(hash(request.node.nodeid)) % 16**10, "x")
    return f"redis://{host}:{port}/0?prefix={prefix}"


@pytest.fixture
def self_signed_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A throwaway certificate for 127.0.0.1 made by the openssl command: (cert, key)
    paths. Skips the test when there is no openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)
