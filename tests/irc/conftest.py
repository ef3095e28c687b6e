"""A real IRC server on 127.0.0.1 and a raw-socket IRC client playing the human.

Server: Debian's ``ngircd`` when installed (``apt-get install -y ngircd``: a complete
RFC 2812 server with channel operators, KICK and CAP), else PyPI's ``miniircd`` (declared
in the ``dev`` extra, so ``pip install -e '.[dev]'`` always provides it; it has no KICK,
so the kick test needs ngircd). ``CSP_BUS_TEST_IRCD=miniircd`` forces miniircd. Tests skip
with the reason only when neither can be found.

The human (:class:`Human`) is deliberately independent of the adapter's own parser: a
Trio socket, ``bytes.split``, and nothing from ``csp_bus.adapters.irc``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _miniircd() -> str | None:
    found = shutil.which("miniircd")
    if found:
        return found
    candidate = Path(sys.executable).with_name("miniircd")
    return str(candidate) if candidate.exists() else None


def _ngircd() -> str | None:
    return shutil.which("ngircd") or next(
        (path for path in ("/usr/sbin/ngircd", "/usr/local/sbin/ngircd") if os.path.exists(path)),
        None,
    )


NGIRCD_CONF = """\
[Global]
    Name = irc.test
    Info = csp-bus test server
    AdminInfo1 = csp-bus tests
    AdminInfo2 = 127.0.0.1
    AdminEMail = tests@localhost
    Listen = 127.0.0.1
    Ports = {port}
    MotdPhrase = "csp-bus test server"
    PidFile = {workdir}/ngircd.pid
[Limits]
    PingTimeout = 120
    PongTimeout = 20
    MaxNickLength = 20
    MaxJoins = 20
[Options]
    DNS = no
    Ident = no
    PAM = no
    RequireAuthPing = no
"""


class IrcServer:
    """One IRC server process on a fixed 127.0.0.1 port; :meth:`restart` keeps the port."""

    def __init__(self, kind: str, binary: str, *, tls: bool = False) -> None:
        self.kind = kind
        self.binary = binary
        self.tls = tls
        self.ca_file: str | None = None  # with tls: the CA that signed the server's cert
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="csp-bus-ircd-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def has_kick(self) -> bool:
        return self.kind == "ngircd"

    def _certificate(self) -> tuple[Path, Path]:
        import trustme  # dev extra: a throwaway CA, as in the email STARTTLS tests

        ca = trustme.CA()
        cert = ca.issue_cert(self.host)
        cert_path, key_path = self.workdir / "cert.pem", self.workdir / "key.pem"
        cert.private_key_pem.write_to_path(str(key_path))
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        ca_path = self.workdir / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_path))
        self.ca_file = str(ca_path)
        return cert_path, key_path

    def _command(self) -> list[str]:
        if self.kind == "ngircd":
            conf = self.workdir / "ngircd.conf"
            text = NGIRCD_CONF.format(port=self.port, workdir=self.workdir)
            if self.tls:  # plain clients on another port, TLS on self.port
                cert, key = self._certificate()
                text = text.replace(f"Ports = {self.port}", f"Ports = {_free_port()}")
                text += f"[SSL]\n    CertFile = {cert}\n    KeyFile = {key}\n"
                text += f"    Ports = {self.port}\n"
            conf.write_text(text)
            return [self.binary, "--nodaemon", "--config", str(conf)]
        command = [self.binary, "--listen", self.host, "--ports", str(self.port)]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command += ["--setuid", "root"]  # miniircd refuses root unless told
        if self.tls:
            cert, key = self._certificate()
            command += ["--ssl-cert-file", str(cert), "--ssl-key-file", str(key)]
        return command

    def start(self) -> None:
        self.process = subprocess.Popen(
            self._command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.workdir,
        )
        self.starts += 1
        deadline = time.monotonic() + 10
        while True:  # test setup only: wait for the listening socket
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.kind} did not start on port {self.port}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _make_server(tls: bool = False) -> IrcServer:
    forced = os.environ.get("CSP_BUS_TEST_IRCD", "")
    ngircd = None if forced == "miniircd" else _ngircd()
    if ngircd is not None:
        return IrcServer("ngircd", ngircd, tls=tls)
    miniircd = _miniircd()
    if miniircd is None:
        pytest.skip(
            "no IRC server to test against: install Debian's ngircd "
            "(apt-get install -y ngircd) or PyPI's miniircd (pip install miniircd)"
        )
    return IrcServer("miniircd", miniircd, tls=tls)


@pytest.fixture
def irc_server() -> Iterator[IrcServer]:
    server = _make_server()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def irc_tls_server() -> Iterator[IrcServer]:
    """The same server speaking TLS only, with a certificate from a throwaway CA
    (``ca_file``) for 127.0.0.1."""
    server = _make_server(tls=True)
    server.start()
    try:
        yield server
    finally:
        server.close()


class Human:
    """A minimal IRC client over a raw socket: register, send lines, wait for lines."""

    def __init__(self, stream: trio.SocketStream, nick: str) -> None:
        self.stream = stream
        self.nick = nick
        self.buffer = b""
        self.seen: list[bytes] = []  # every line received, CRLF stripped

    @classmethod
    async def connect(cls, server: IrcServer, nick: str) -> Human:
        stream = await trio.open_tcp_stream(server.host, server.port)
        human = cls(stream, nick)
        await human.send(f"NICK {nick}", f"USER {nick} 0 * :Human {nick}")
        await human.expect(lambda words: len(words) > 1 and words[1] == b"001")
        return human

    async def join(self, channel: str) -> None:
        """JOIN and wait until the server confirms it (end of NAMES): a JOIN is processed
        later than it is sent (ngircd delays busy clients), and the tests must not race
        the bot into the channel."""
        await self.send(f"JOIN {channel}")
        await self.expect(
            lambda w: len(w) > 3 and w[1] == b"366" and w[3].lower() == channel.lower().encode()
        )

    async def send(self, *lines: str) -> None:
        for line in lines:
            await self.stream.send_all(line.encode() + b"\r\n")

    async def _line(self) -> bytes:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("the IRC server closed the human's connection")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        line = line.rstrip(b"\r")
        self.seen.append(line)
        if line.startswith(b"PING"):
            await self.stream.send_all(b"PONG" + line[4:] + b"\r\n")
        return line

    async def expect(self, predicate: Callable[[list[bytes]], bool], timeout: float = 10) -> bytes:  # noqa: ASYNC109
        """The next line whose space-separated words satisfy ``predicate``."""
        with trio.fail_after(timeout):
            while True:
                line = await self._line()
                if predicate(line.split(b" ")):
                    return line

    async def expect_privmsg(self, sender: str, timeout: float = 10) -> str:  # noqa: ASYNC109
        line = await self.expect(
            lambda w: len(w) > 2 and w[1] == b"PRIVMSG" and w[0].startswith(f":{sender}!".encode()),
            timeout,
        )
        return line.split(b" :", 1)[1].decode()

    async def aclose(self) -> None:
        await self.stream.aclose()


@pytest.fixture
async def humans(irc_server: IrcServer) -> Any:
    """``await humans("alice")``: a connected :class:`Human`; all closed at teardown."""
    opened: list[Human] = []

    async def connect(nick: str) -> Human:
        human = await Human.connect(irc_server, nick)
        opened.append(human)
        return human

    yield connect
    for human in opened:
        await human.aclose()


@pytest.fixture
def irc_server_with_kick(irc_server: IrcServer) -> IrcServer:
    """The server, for tests that need channel operators and KICK (ngircd has them)."""
    if not irc_server.has_kick:
        pytest.skip("miniircd has no KICK; install ngircd (apt-get install -y ngircd)")
    return irc_server
