"""``rediss://`` against a real ``redis-server --tls-port`` with a throwaway CA."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from csp_bus import open_layer
from csp_bus.errors import LayerUnavailable

from .conftest import REDIS_SERVER, free_port

pytestmark = pytest.mark.redis

OPENSSL = shutil.which("openssl")


def make_certificates(root: Path) -> None:
    assert OPENSSL is not None

    def run(*args: str) -> None:
        subprocess.run([OPENSSL, *args], cwd=root, check=True, capture_output=True, timeout=30)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "1", "-subj", "/CN=csp-bus test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.ext")  # fmt: skip


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    if REDIS_SERVER is None or OPENSSL is None:
        pytest.skip("needs redis-server and openssl")
    make_certificates(tmp_path)
    port = free_port()
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
         "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            probe = subprocess.run(
                ["redis-cli", "--tls", "--cacert", str(tmp_path / "ca.crt"), "-p", str(port),
                 "PING"],
                capture_output=True, timeout=5,
            )  # fmt: skip
            if probe.stdout.startswith(b"PONG"):
                break
            if process.poll() is not None:
                pytest.skip("this redis-server was built without TLS")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server --tls-port did not start")
            time.sleep(0.05)
        yield port, tmp_path / "ca.crt"
    finally:
        process.kill()
        process.wait(10)


async def test_rediss_round_trip(tls_server: tuple[int, Path]) -> None:
    port, ca = tls_server
    url = f"rediss://127.0.0.1:{port}/0?prefix=tls&ssl_ca_certs={ca}"
    async with open_layer(url) as layer:
        await layer.send("secure", {"over": "tls"})
        assert await layer.receive("secure") == ("secure", {"over": "tls"})
        await layer.send("secure!x", {"local": True})
        assert await layer.receive("secure!") == ("secure!x", {"local": True})


async def test_rediss_refuses_an_unknown_certificate(tls_server: tuple[int, Path]) -> None:
    port, _ca = tls_server
    async with open_layer(f"rediss://127.0.0.1:{port}/0?prefix=tls") as layer:
        with pytest.raises(LayerUnavailable, match="cannot connect"):
            await layer.send("secure", {})
    async with open_layer(f"rediss://127.0.0.1:{port}/0?prefix=tls&ssl_cert_reqs=none") as layer:
        await layer.send("secure", {"unverified": True})
        assert await layer.receive("secure") == ("secure", {"unverified": True})
