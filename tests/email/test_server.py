"""Inbound SMTP end to end: stdlib smtplib (the real client) -> serve_smtp -> the bus."""

from __future__ import annotations

import email.policy
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from csp_bus.adapters.email.protocol import SessionConfig
from csp_bus.adapters.email.server import SMTPServerConfig, serve_smtp

from csp_bus import open_layer
from csp_bus.errors import UsageError
from csp_bus.layers.base import ChannelLayer

DOMAINS = frozenset({"example.com"})


def make_config(**kw: Any) -> SMTPServerConfig:
    session = kw.pop("session", None) or SessionConfig(
        hostname="mx.example.com",
        accepted_domains=DOMAINS,
        **{k[8:]: kw.pop(k) for k in list(kw) if k.startswith("session_")},
    )
    return SMTPServerConfig(binds=(("127.0.0.1", 0),), session=session, **kw)


@pytest.fixture
async def layer() -> AsyncIterator[ChannelLayer]:
    async with open_layer("memory://?capacity=5") as layer:
        yield layer


async def start(nursery: trio.Nursery, layer: ChannelLayer, config: SMTPServerConfig, **kw):
    addresses = await nursery.start(
        lambda task_status: serve_smtp(layer, config, task_status=task_status, **kw)
    )
    return addresses[0]


def in_thread(fn: Callable[[], Any]) -> Any:
    return trio.to_thread.run_sync(fn)


async def next_mail(layer: ChannelLayer) -> dict:
    with trio.fail_after(5):
        channel, message = await layer.receive("email.receive")
    assert channel == "email.receive"
    return message


# ------------------------------------------------------------------------ messages


async def test_plain_message(layer: ChannelLayer, nursery: trio.Nursery) -> None:
    host, port = await start(nursery, layer, make_config())
    raw = b"From: a@example.org\r\nSubject: Hello\r\n\r\nFirst line\r\n.dot line\r\n"

    def send() -> dict:
        with smtplib.SMTP(host, port, local_hostname="client.example.org") as client:
            return client.sendmail("a@example.org", ["support@example.com"], raw)

    assert await in_thread(send) == {}
    mail = await next_mail(layer)
    assert mail["from"] == "a@example.org"
    assert mail["to"] == ["support@example.com"]
    assert mail["headers"]["subject"] == "Hello"
    assert mail["content"]["body"] == b"First line\r\n.dot line\r\n"
    assert mail["message"] == raw
    assert mail["helo"] == "client.example.org"
    assert mail["client"][0] == "127.0.0.1" and mail["tls"] is False


async def test_multipart_with_attachment(layer: ChannelLayer, nursery: trio.Nursery) -> None:
    host, port = await start(nursery, layer, make_config())
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.org>"
    msg["To"] = "support@example.com, other@example.com"
    msg["Subject"] = "Report"
    msg.set_content("Please find the report attached.\n")
    msg.add_alternative("<p>Please find the report attached.</p>", subtype="html")
    payload = bytes(range(256)) * 20
    msg.add_attachment(payload, maintype="application", subtype="pdf", filename="report.pdf")

    def send() -> None:
        with smtplib.SMTP(host, port) as client:
            client.send_message(msg)

    await in_thread(send)
    mail = await next_mail(layer)
    assert mail["to"] == ["support@example.com", "other@example.com"]
    alternative, attachment = mail["content"]["parts"]
    assert [p["content-type"].split(";")[0] for p in alternative["parts"]] == [
        "text/plain",
        "text/html",
    ]
    assert attachment["filename"] == "report.pdf"
    assert attachment["body"] == payload


async def test_non_ascii_smtputf8(layer: ChannelLayer, nursery: trio.Nursery) -> None:
    host, port = await start(nursery, layer, make_config())
    msg = EmailMessage(policy=email.policy.SMTPUTF8)
    msg["From"] = "Jörg <jörg@exämple.org>"
    msg["To"] = "Zoë <zoë@example.com>"
    msg["Subject"] = "Grüße aus Köln ☕"
    msg.set_content("Schöne Grüße\n")

    def send() -> None:
        with smtplib.SMTP(host, port) as client:
            client.send_message(msg)  # uses SMTPUTF8 for the international addresses

    await in_thread(send)
    mail = await next_mail(layer)
    assert mail["from"] == "jörg@exämple.org"
    assert mail["to"] == ["zoë@example.com"]
    assert mail["headers"]["subject"] == "Grüße aus Köln ☕"
    assert mail["content"]["body"].decode() == "Schöne Grüße\r\n"


async def test_pipelined_commands(layer: ChannelLayer, nursery: trio.Nursery) -> None:
    host, port = await start(nursery, layer, make_config())

    def send() -> list[tuple[int, bytes]]:
        with smtplib.SMTP(host, port) as client:
            client.ehlo("pipeliner")
            assert client.has_extn("pipelining")
            # One write for the whole batch (RFC 2920), then read every reply in order.
            client.send(
                "MAIL FROM:<p@example.org>\r\nRCPT TO:<a@example.com>\r\n"
                "RCPT TO:<b@elsewhere.net>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n"
            )
            replies = [client.getreply() for _ in range(5)]
            client.send("Subject: piped\r\n\r\nbody\r\n.\r\n")
            replies.append(client.getreply())
            return replies

    replies = await in_thread(send)
    assert [code for code, _ in replies] == [250, 250, 550, 250, 354, 250]
    mail = await next_mail(layer)
    assert mail["to"] == ["a@example.com", "c@example.com"]


async def test_oversize_message(layer: ChannelLayer, nursery: trio.Nursery) -> None:
    config = make_config(session_max_message_size=10_000)
    host, port = await start(nursery, layer, config)
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 20

    def send_declared() -> None:
        with smtplib.SMTP(host, port) as client:
            client.sendmail("a@example.org", ["s@example.com"], big)  # declares SIZE=

    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        await in_thread(send_declared)
    assert info.value.smtp_code == 552

    def send_undeclared() -> tuple[int, bytes]:
        with smtplib.SMTP(host, port) as client:
            client.helo("old-client")  # HELO: no SIZE parameter, the data itself is too big
            client.mail("a@example.org")
            client.rcpt("s@example.com")
            return client.data(big)

    code, text = await in_thread(send_undeclared)
    assert code == 552 and b"5.3.4" in text
    assert await layer.receive_nowait("email.receive") is None


async def test_relay_is_refused(layer: ChannelLayer, nursery: trio.Nursery) -> None:
    host, port = await start(nursery, layer, make_config())

    def send() -> None:
        with smtplib.SMTP(host, port) as client:
            client.sendmail("a@example.org", ["victim@elsewhere.net"], b"Subject: x\r\n\r\nx\r\n")

    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        await in_thread(send)
    assert info.value.recipients["victim@elsewhere.net"][0] == 550


# ------------------------------------------------------------------- nothing lost


async def test_full_channel_answers_451_and_the_message_is_not_lost(
    nursery: trio.Nursery,
) -> None:
    async with open_layer("memory://?capacity=1") as layer:
        host, port = await start(nursery, layer, make_config(bus_wait=0))
        raw = b"Subject: %d\r\n\r\nbody\r\n"

        def send(n: int) -> None:
            with smtplib.SMTP(host, port) as client:
                client.sendmail("a@example.org", ["s@example.com"], raw % n)

        await in_thread(lambda: send(1))  # fills the channel
        with pytest.raises(smtplib.SMTPDataError) as info:
            await in_thread(lambda: send(2))
        assert info.value.smtp_code == 451  # temporary: the client keeps the mail
        assert (await next_mail(layer))["headers"]["subject"] == "1"
        await in_thread(lambda: send(2))  # the client's retry succeeds
        assert (await next_mail(layer))["headers"]["subject"] == "2"


async def test_bus_wait_rides_out_a_short_burst(nursery: trio.Nursery) -> None:
    async with open_layer("memory://?capacity=1") as layer:
        host, port = await start(nursery, layer, make_config(bus_wait=5))
        await layer.send("email.receive", {"filler": True})

        async def drain_later() -> None:
            await trio.sleep(0.2)
            await layer.receive("email.receive")

        nursery.start_soon(drain_later)

        def send() -> None:
            with smtplib.SMTP(host, port) as client:
                client.sendmail("a@example.org", ["s@example.com"], b"Subject: w\r\n\r\nb\r\n")

        await in_thread(send)
        assert (await next_mail(layer))["headers"]["subject"] == "w"


async def test_closed_layer_answers_451(nursery: trio.Nursery) -> None:
    async with open_layer("memory://") as layer:
        host, port = await start(nursery, layer, make_config())
        await layer.aclose()

        def send() -> None:
            with smtplib.SMTP(host, port) as client:
                client.sendmail("a@example.org", ["s@example.com"], b"Subject: x\r\n\r\nx\r\n")

        with pytest.raises(smtplib.SMTPDataError) as info:
            await in_thread(send)
        assert info.value.smtp_code == 451


# ------------------------------------------------------------------ TLS and AUTH


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """(certfile, keyfile, cafile) for localhost/127.0.0.1, made by a throwaway CA."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "mx.example.com")
    folder = tmp_path_factory.mktemp("tls")
    certfile, keyfile, cafile = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    return str(certfile), str(keyfile), str(cafile)


async def test_starttls_and_auth(
    layer: ChannelLayer, nursery: trio.Nursery, certificates: tuple[str, str, str]
) -> None:
    certfile, keyfile, cafile = certificates
    config = make_config(
        certfile=certfile,
        keyfile=keyfile,
        session_auth=True,
        authenticator=lambda user, password: (user, password) == ("alice", "s3cret"),
    )
    host, port = await start(nursery, layer, config)
    context = ssl.create_default_context(cafile=cafile)

    def send() -> list[str]:
        seen = []
        with smtplib.SMTP(host, port) as client:
            client.ehlo()
            seen.append(f"auth-before-tls={client.has_extn('auth')}")
            client.starttls(context=context)
            client.ehlo()
            seen.append(f"auth-after-tls={client.has_extn('auth')}")
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("alice", "wrong")
            client.login("alice", "s3cret")
            client.sendmail("alice@example.org", ["s@example.com"], b"Subject: tls\r\n\r\nx\r\n")
        return seen

    assert await in_thread(send) == ["auth-before-tls=False", "auth-after-tls=True"]
    mail = await next_mail(layer)
    assert mail["tls"] is True and mail["auth_user"] == "alice"


async def test_failed_tls_handshake_ends_the_connection(
    layer: ChannelLayer, nursery: trio.Nursery, certificates: tuple[str, str, str]
) -> None:
    certfile, keyfile, _ = certificates
    host, port = await start(nursery, layer, make_config(certfile=certfile, keyfile=keyfile))
    # The client does not trust our throwaway CA: its handshake fails, the server copes.
    context = ssl.create_default_context()

    def send() -> None:
        with smtplib.SMTP(host, port) as client:
            client.starttls(context=context)

    with pytest.raises(ssl.SSLError):
        await in_thread(send)
    # ... and keeps serving others.
    await in_thread(lambda: smtplib.SMTP(host, port).quit())


# ------------------------------------------------------------ timeouts and limits


def raw_client(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=5)
    assert sock.recv(1024).startswith(b"220 ")
    return sock


async def test_command_timeout_answers_421(layer: ChannelLayer, nursery: trio.Nursery) -> None:
    host, port = await start(nursery, layer, make_config(command_timeout=0.3))

    def idle() -> bytes:
        with raw_client(host, port) as sock:
            sock.sendall(b"EHLO x\r\n")
            sock.recv(1024)
            return sock.recv(1024)  # nothing more sent: the server times out

    assert (await in_thread(idle)).startswith(b"421 4.4.2")


async def test_data_timeout_bounds_a_trickling_client(
    layer: ChannelLayer, nursery: trio.Nursery
) -> None:
    host, port = await start(nursery, layer, make_config(data_timeout=0.5, command_timeout=10))

    def trickle() -> bytes:
        with raw_client(host, port) as sock:
            sock.sendall(b"HELO x\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<s@example.com>\r\nDATA\r\n")
            received = b""
            while received.count(b"\r\n") < 4:
                received += sock.recv(1024)
            sock.settimeout(0.05)
            for _ in range(200):  # one byte every 50 ms, each well inside any idle timeout
                try:
                    sock.sendall(b"x")
                    data = sock.recv(1024)
                except TimeoutError:
                    continue
                except OSError:
                    return b""
                return data
            return b"never timed out"

    assert (await in_thread(trickle)).startswith(b"421 4.4.2")
    assert await layer.receive_nowait("email.receive") is None


async def test_max_connections(layer: ChannelLayer, nursery: trio.Nursery) -> None:
    host, port = await start(nursery, layer, make_config(max_connections=1))

    def two() -> bytes:
        with raw_client(host, port), socket.create_connection((host, port), timeout=5) as other:
            return other.recv(1024)

    assert (await in_thread(two)).startswith(b"421 4.7.0")


async def test_graceful_shutdown(layer: ChannelLayer) -> None:
    stopping = trio.Event()
    async with trio.open_nursery() as nursery:
        host, port = await start(nursery, layer, make_config(), stopping=stopping)

        def idle_then_closed() -> bytes:
            with raw_client(host, port) as sock:
                sock.sendall(b"NOOP\r\n")
                assert sock.recv(1024).startswith(b"250")
                return sock.recv(1024)

        async def stop_soon() -> None:
            await trio.sleep(0.2)
            stopping.set()

        nursery.start_soon(stop_soon)
        assert (await in_thread(idle_then_closed)).startswith(b"421 4.3.2")
    # serve_smtp returned by itself once idle sessions were closed: the nursery exited.
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=1).close()


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="domains"):
        SMTPServerConfig(session=SessionConfig())
    with pytest.raises(UsageError, match="together"):
        make_config(certfile="x.pem")
    with pytest.raises(UsageError, match="certificate"):
        make_config(session_starttls=True)
    with pytest.raises(UsageError, match="authenticator"):
        make_config(session_auth=True)
    with pytest.raises(UsageError, match="command_timeout"):
        make_config(command_timeout=0)
    with pytest.raises(UsageError, match="cannot load"):
        make_config(
            certfile=str(tmp_path / "no.pem"), keyfile=str(tmp_path / "no.key")
        ).ssl_context()


async def test_a_client_that_never_reads_is_cut_off(
    layer: ChannelLayer, nursery: trio.Nursery
) -> None:
    host, port = await start(nursery, layer, make_config(command_timeout=0.5))

    def flood() -> str:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(20)
        sock.connect((host, port))
        with sock:
            deadline = time.monotonic() + 15
            try:
                while time.monotonic() < deadline:  # EHLO replies are ~20x the command
                    sock.sendall(b"EHLO x\r\n" * 1000)
            except OSError as exc:
                return type(exc).__name__
            return "never cut off"

    assert await in_thread(flood) in ("ConnectionResetError", "BrokenPipeError")


async def test_mail_too_big_for_the_bus_is_552(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_layer("memory://?max_message_size=3000") as layer:
        host, port = await start(nursery, layer, make_config(session_max_message_size=2000))
        assert "may not fit the layer's max_message_size 3000" in caplog.text

        def send() -> None:
            with smtplib.SMTP(host, port) as client:
                small = b"Subject: small\r\n\r\n" + b"y" * 70 + b"\r\n"
                client.sendmail("a@example.org", ["s@example.com"], small)
                big = b"Subject: big\r\n\r\n" + (b"z" * 70 + b"\r\n") * 25  # ~1.8 KB
                client.sendmail("a@example.org", ["s@example.com"], big)

        with pytest.raises(smtplib.SMTPDataError) as info:
            await in_thread(send)
        assert info.value.smtp_code == 552 and b"too big for the bus" in info.value.smtp_error
        assert (await next_mail(layer))["headers"]["subject"] == "small"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A redis-server of this test's own, so that the test may stop it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield process, port
    finally:
        process.kill()
        process.wait(10)


@pytest.mark.redis
async def test_redis_down_answers_451(
    nursery: trio.Nursery, private_redis: tuple[subprocess.Popen[bytes], int]
) -> None:
    process, port = private_redis
    url = f"redis://127.0.0.1:{port}/0?connect_timeout=0.5&timeout=1"
    async with open_layer(url) as layer:
        host, smtp_port = await start(nursery, layer, make_config(bus_wait=0))
        raw = b"Subject: via redis\r\n\r\nbody\r\n"

        def send() -> None:
            with smtplib.SMTP(host, smtp_port, timeout=30) as client:
                client.sendmail("a@example.org", ["s@example.com"], raw)

        await in_thread(send)
        assert (await next_mail(layer))["headers"]["subject"] == "via redis"
        process.kill()
        await in_thread(process.wait)
        with pytest.raises(smtplib.SMTPDataError) as info:
            await in_thread(send)
        assert info.value.smtp_code == 451
