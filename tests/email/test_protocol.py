"""The sans-IO SMTP server: table tests without sockets, and hostile input."""

from __future__ import annotations

import ast
import base64
from pathlib import Path

import csp_bus.adapters.email.protocol as protocol_module
import pytest
from csp_bus.adapters.email.protocol import (
    NEED_DATA,
    PAUSED,
    SessionConfig,
    SMTPServerConnection,
    State,
    format_reply,
    normalize_domain,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csp_bus.errors import UsageError

CONFIG = SessionConfig(hostname="mx.example.com", accepted_domains={"example.com", "Bücher.de"})
EHLO = b"EHLO client.example.org\r\n"


def open_session(smtp, config: SessionConfig = CONFIG, **kw):
    driver = smtp(SMTPServerConnection(config, **kw))
    driver.pump()
    return driver, driver_replies(bytes(driver.wire))


# ------------------------------------------------------------------------ purity


@pytest.mark.parametrize("module", ["protocol", "messages"])
def test_sans_io_modules_import_no_io_library(module: str) -> None:
    path = Path(protocol_module.__file__).with_name(f"{module}.py")
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "asyncio", "socket", "ssl", "smtplib", "anyio", "threading"}


# ------------------------------------------------------------------------ basics


def test_greeting_and_ehlo_advertise_extensions(smtp) -> None:
    driver, greeting = open_session(smtp)
    assert greeting == [(220, "mx.example.com ESMTP csp-bus")]
    driver.feed(EHLO)
    text = bytes(driver.wire).decode()
    for keyword in ("PIPELINING", "SIZE 409600", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"):
        assert f"250-{keyword}\r\n" in text or f"250 {keyword}\r\n" in text
    assert "STARTTLS" not in text and "AUTH" not in text


def test_plain_transaction_with_dot_unstuffing(smtp) -> None:
    driver, _ = open_session(smtp)
    replies = driver.feed(
        EHLO + b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
    )
    assert [code for code, _ in replies] == [250, 250, 250, 354]
    replies = driver.feed(b"Subject: x\r\n\r\n..leading dot\r\n...\r\nend\r\n.\r\n")
    assert replies == [(250, "2.0.0 OK: queued")]
    (message,) = driver.messages
    assert message.sender == "alice@example.org"
    assert message.recipients == ("bob@example.com",)
    assert message.data == b"Subject: x\r\n\r\n.leading dot\r\n..\r\nend\r\n"
    assert message.helo == "client.example.org"
    assert driver.conn.state is State.COMMAND


def test_null_sender_and_postmaster(smtp) -> None:
    driver, _ = open_session(smtp)
    replies = driver.feed(EHLO + b"MAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\nDATA\r\nhi\r\n.\r\n")
    assert [code for code, _ in replies] == [250, 250, 250, 354, 250]
    assert driver.messages[0].sender is None
    assert driver.messages[0].recipients == ("Postmaster",)


def test_never_an_open_relay(smtp) -> None:
    driver, _ = open_session(smtp)
    replies = driver.feed(
        EHLO + b"MAIL FROM:<a@example.org>\r\n"
        b"RCPT TO:<victim@elsewhere.net>\r\n"
        b"RCPT TO:<victim@example.com.elsewhere.net>\r\n"
        b"RCPT TO:<x@[127.0.0.1]>\r\n"
        b"RCPT TO:<someone@EXAMPLE.com>\r\n"
        b"DATA\r\nbody\r\n.\r\n"
    )
    codes = [code for code, _ in replies]
    assert codes == [250, 250, 550, 550, 550, 250, 354, 250]
    assert "5.7.1" in replies[2][1]
    assert driver.messages[0].recipients == ("someone@EXAMPLE.com",)


def test_data_without_any_accepted_recipient_is_refused(smtp) -> None:
    driver, _ = open_session(smtp)
    replies = driver.feed(
        EHLO + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@elsewhere.net>\r\nDATA\r\n"
    )
    assert [code for code, _ in replies] == [250, 250, 550, 554]
    assert driver.conn.state is State.COMMAND


def test_internationalized_domain_matches_its_punycode(smtp) -> None:
    assert normalize_domain("Bücher.DE.") == "xn--bcher-kva.de"
    driver, _ = open_session(smtp)
    replies = driver.feed(
        EHLO
        + "MAIL FROM:<jörg@example.org> SMTPUTF8\r\n"
        "RCPT TO:<jörg@bücher.de>\r\nRCPT TO:<a@xn--bcher-kva.de>\r\n".encode()
    )
    assert [code for code, _ in replies] == [250, 250, 250, 250]


@pytest.mark.parametrize(
    ("commands", "expected"),
    [
        (b"MAIL FROM:<a@b.org>\r\n", [(503, "5.5.1 Send EHLO or HELO first")]),
        (EHLO + b"RCPT TO:<a@example.com>\r\n", [250, 503]),
        (EHLO + b"DATA\r\n", [250, 503]),
        (EHLO + b"MAIL FROM:<a@b.org>\r\nMAIL FROM:<a@b.org>\r\n", [250, 250, 503]),
        (EHLO + b"MAIL FROM:a@b.org\r\n", [250, 250]),  # liberal: no brackets
        (EHLO + b"MAIL FROM: <a@b.org>\r\n", [250, 250]),  # liberal: space
        (EHLO + b"MAIL FROM:<@relay.net,@x.net:a@b.org>\r\n", [250, 250]),  # source route
        (EHLO + b"MAIL FROM:<a@b.org\r\n", [250, 501]),
        (EHLO + b"MAIL TO:<a@b.org>\r\n", [250, 501]),
        (EHLO + b"MAIL FROM:<not an address>\r\n", [250, 553]),
        (EHLO + b"MAIL FROM:<a@b.org> SIZE=99999999\r\n", [250, 552]),
        (EHLO + b"MAIL FROM:<a@b.org> SIZE=1000 BODY=8BITMIME\r\n", [250, 250]),
        (EHLO + b"MAIL FROM:<a@b.org> BODY=BINARYMIME\r\n", [250, 555]),
        (EHLO + b"MAIL FROM:<a@b.org> RET=HDRS\r\n", [250, 555]),
        (EHLO + "MAIL FROM:<é@b.org>\r\n".encode(), [250, 553]),
        (b"HELO x\r\nMAIL FROM:<a@b.org> SIZE=10\r\n", [250, 555]),  # no ESMTP after HELO
        (
            EHLO + b"MAIL FROM:<a@b.org>\r\nRCPT TO:<a@example.com> NOTIFY=NEVER\r\n",
            [250, 250, 555],
        ),
        (b"VRFY root\r\n", [252]),
        (b"VRFY\r\n", [501]),
        (b"EXPN staff\r\n", [502]),
        (b"NOOP\r\n", [250]),
        (b"RSET\r\n", [250]),
        (b"HELP\r\n", [214]),
        (b"FOO bar\r\n", [500]),
        (b"STARTTLS\r\n", [502]),
        (EHLO + b"AUTH PLAIN AGFAYg==\r\n", [250, 502]),
        (b"\xff\xfe\r\n", [500]),
        (b"NOOP \x00\r\n", [500]),
        (b"QUIT\r\n", [221]),
    ],
)
def test_command_table(smtp, commands: bytes, expected: list) -> None:
    driver, _ = open_session(smtp)
    replies = driver.feed(commands)
    if expected and isinstance(expected[0], tuple):
        assert replies == expected
    else:
        assert [code for code, _ in replies] == expected


def test_rset_clears_the_transaction(smtp) -> None:
    driver, _ = open_session(smtp)
    replies = driver.feed(
        EHLO + b"MAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.com>\r\nRSET\r\nDATA\r\n"
        b"MAIL FROM:<c@d.org>\r\n"
    )
    assert [code for code, _ in replies] == [250, 250, 250, 250, 503, 250]
    assert driver.conn.sender == "c@d.org" and driver.conn.recipients == []


def test_quit_closes(smtp) -> None:
    driver, _ = open_session(smtp)
    driver.feed(b"QUIT\r\nNOOP\r\n")
    assert driver.closed and driver.conn.closed
    assert parse_codes(driver) == [220, 221]
    driver.conn.receive_data(b"NOOP\r\n")  # ignored after close
    assert driver.conn.next_event().reason == "quit"


def parse_codes(driver) -> list[int]:
    return [int(line[:3]) for line in bytes(driver.wire).split(b"\r\n") if line[3:4] == b" "]


# ------------------------------------------------------------------------ limits


def test_message_size_limit_is_552_after_the_data(smtp) -> None:
    config = SessionConfig(accepted_domains={"example.com"}, max_message_size=2000)
    driver, _ = open_session(smtp, config)
    driver.feed(EHLO + b"MAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n")
    replies = driver.feed((b"x" * 900 + b"\r\n") * 3 + b".\r\n")
    assert replies[0][0] == 552 and "5.3.4" in replies[0][1]
    assert driver.messages == []
    # The session goes on: a small message is accepted afterwards.
    replies = driver.feed(b"MAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\nok\r\n.\r\n")
    assert [code for code, _ in replies] == [250, 250, 354, 250]


def test_recipient_limit_is_452(smtp) -> None:
    config = SessionConfig(accepted_domains={"example.com"}, max_recipients=2)
    driver, _ = open_session(smtp, config)
    rcpts = b"".join(b"RCPT TO:<u%d@example.com>\r\n" % i for i in range(3))
    replies = driver.feed(EHLO + b"MAIL FROM:<a@b.org>\r\n" + rcpts)
    assert replies[-1] == (452, "4.5.3 Too many recipients")
    assert [code for code, _ in replies] == [250, 250, 250, 250, 452]


def test_command_line_too_long_is_500_and_the_session_continues(smtp) -> None:
    driver, _ = open_session(smtp)
    replies = driver.feed(b"NOOP " + b"x" * 600 + b"\r\nNOOP\r\n")
    assert replies == [(500, "5.5.2 Line too long"), (250, "2.0.0 OK")]
    # An endless line is discarded as it arrives: the buffer stays bounded.
    for _ in range(100):
        driver.feed(b"y" * 1000)
    assert len(driver.conn._buffer) <= 1
    assert driver.feed(b"\r\nNOOP\r\n") == [(500, "5.5.2 Line too long"), (250, "2.0.0 OK")]


def test_data_line_too_long_is_500(smtp) -> None:
    driver, _ = open_session(smtp)
    driver.feed(EHLO + b"MAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n")
    replies = driver.feed(b"a" * 1200 + b"\r\n.\r\n")
    assert replies[0][0] == 500 and "Line too long" in replies[0][1]
    assert driver.messages == []


def test_too_many_errors_disconnects_with_421(smtp) -> None:
    config = SessionConfig(accepted_domains={"example.com"}, max_errors=3)
    driver, _ = open_session(smtp, config)
    replies = driver.feed(b"BAD\r\nBAD\r\nBAD\r\nNOOP\r\n")
    assert [code for code, _ in replies] == [500, 500, 500, 421]
    assert driver.closed


def test_timeout_and_shutdown_answer_421(smtp) -> None:
    driver, _ = open_session(smtp)
    driver.conn.timeout()
    driver.pump()
    assert parse_codes(driver)[-1] == 421 and driver.closed
    driver2, _ = open_session(smtp)
    driver2.conn.shutdown()
    driver2.pump()
    assert parse_codes(driver2)[-1] == 421 and driver2.closed


def test_eof_during_data_loses_nothing_silently(smtp) -> None:
    driver, _ = open_session(smtp)
    driver.feed(EHLO + b"MAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\nhalf")
    driver.feed(b"")
    assert driver.closed and driver.messages == []
    assert "during DATA" in driver.events[-1].reason


# --------------------------------------------------------------- nothing lost, pipelining


def test_rejected_message_gets_the_glue_reply(smtp) -> None:
    driver, _ = open_session(smtp)
    driver.decide = lambda event: (451, "4.3.0 Bus full, try again later")
    replies = driver.feed(
        EHLO + b"MAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\nhi\r\n.\r\n"
    )
    assert replies[-1] == (451, "4.3.0 Bus full, try again later")
    assert driver.conn.sender is None and driver.conn.state is State.COMMAND


def test_paused_until_the_glue_decides(smtp) -> None:
    conn = SMTPServerConnection(CONFIG)
    conn.receive_data(
        EHLO + b"MAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\nhi\r\n.\r\nNOOP\r\n"
    )
    event = conn.next_event()
    assert event.data == b"hi\r\n"
    assert conn.next_event() is PAUSED
    with pytest.raises(UsageError, match="wait-tls"):
        conn.tls_started()
    conn.accept_message()
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().endswith(b"250 2.0.0 OK: queued\r\n250 2.0.0 OK\r\n")


def test_pipelined_batch_is_answered_in_order(smtp) -> None:
    driver, _ = open_session(smtp)
    batch = (
        EHLO + b"MAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.com>\r\nRCPT TO:<y@nope.net>\r\n"
        b"RCPT TO:<z@example.com>\r\nDATA\r\n"
    )
    replies = driver.feed(batch)
    assert [code for code, _ in replies] == [250, 250, 250, 550, 250, 354]


def test_two_messages_in_one_session(smtp) -> None:
    driver, _ = open_session(smtp)
    tx = b"MAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\nmsg\r\n.\r\n"
    driver.feed(EHLO + tx + tx)
    assert len(driver.messages) == 2


def test_bare_lf_dot_does_not_end_data(smtp) -> None:
    """SMTP smuggling (CVE-2023-51764 and friends): only CRLF.CRLF ends a message."""
    driver, _ = open_session(smtp)
    driver.feed(EHLO + b"MAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n")
    replies = driver.feed(b"one\r\n\n.\nMAIL FROM:<evil@x.org>\nRCPT TO:<x@example.com>\r\n.\r\n")
    assert [code for code, _ in replies] == [250]
    (message,) = driver.messages
    assert message.sender == "a@b.org"
    assert b"MAIL FROM:<evil@x.org>" in message.data


# ---------------------------------------------------------------------- STARTTLS, AUTH

TLS_CONFIG = SessionConfig(accepted_domains={"example.com"}, starttls=True, auth=True)


def test_starttls_restarts_the_session_and_drops_pipelined_plaintext(smtp) -> None:
    driver, _ = open_session(smtp, TLS_CONFIG)
    driver.feed(EHLO)
    assert b"250 STARTTLS" in driver.wire and b"AUTH" not in driver.wire
    replies = driver.feed(b"STARTTLS\r\nMAIL FROM:<injected@x.org>\r\n")
    assert replies == [(220, "2.0.0 Ready to start TLS")]
    assert driver.conn.tls and driver.conn.helo is None
    # After TLS, EHLO again; AUTH is now offered, STARTTLS no longer.
    start = len(driver.wire)
    replies = driver.feed(b"MAIL FROM:<a@b.org>\r\n" + EHLO)
    assert replies[0][0] == 503
    after = bytes(driver.wire[start:])
    assert b"AUTH PLAIN LOGIN" in after and b"STARTTLS" not in after


def test_auth_refused_before_tls(smtp) -> None:
    driver, _ = open_session(smtp, TLS_CONFIG)
    replies = driver.feed(EHLO + b"AUTH PLAIN AHUAcA==\r\n")
    assert replies[-1] == (530, "5.7.0 Must issue a STARTTLS command first")


def _tls_session(smtp, config=TLS_CONFIG):
    driver, _ = open_session(smtp, config)
    driver.feed(EHLO + b"STARTTLS\r\n")
    driver.feed(EHLO)
    return driver


def test_auth_plain_and_login(smtp) -> None:
    plain_ok = base64.b64encode(b"\0alice\0secret")
    plain_bad = base64.b64encode(b"\0alice\0wrong")
    driver = _tls_session(smtp)
    assert driver.feed(b"AUTH PLAIN " + plain_bad + b"\r\n")[-1][0] == 535
    assert driver.feed(b"AUTH PLAIN\r\n")[-1] == (334, "")
    assert driver.feed(plain_ok + b"\r\n")[-1][0] == 235
    assert driver.conn.auth_user == "alice"
    assert driver.feed(b"AUTH PLAIN " + plain_ok + b"\r\n")[-1][0] == 503

    driver = _tls_session(smtp)
    assert driver.feed(b"AUTH LOGIN\r\n")[-1] == (334, "VXNlcm5hbWU6")
    assert driver.feed(base64.b64encode(b"bob") + b"\r\n")[-1] == (334, "UGFzc3dvcmQ6")
    assert driver.feed(base64.b64encode(b"secret") + b"\r\n")[-1][0] == 235
    assert driver.conn.auth_user == "bob"
    replies = driver.feed(b"MAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\nx\r\n.\r\n")
    assert replies[-1][0] == 250 and driver.messages[0].auth_user == "bob"
    assert driver.messages[0].tls


def test_auth_cancel_bad_base64_and_unknown_mechanism(smtp) -> None:
    driver = _tls_session(smtp)
    driver.feed(b"AUTH LOGIN\r\n")
    assert driver.feed(b"*\r\n")[-1][0] == 501
    assert driver.feed(b"AUTH PLAIN !!!notbase64\r\n")[-1][0] == 501
    assert driver.feed(b"AUTH CRAM-MD5\r\n")[-1][0] == 504
    assert driver.feed(b"AUTH PLAIN " + base64.b64encode(b"no-nuls") + b"\r\n")[-1][0] == 501
    assert driver.feed(b"NOOP\r\n")[-1][0] == 250


def test_auth_required(smtp) -> None:
    config = SessionConfig(
        accepted_domains={"example.com"}, starttls=True, auth=True, auth_required=True
    )
    driver = _tls_session(smtp, config)
    assert driver.feed(b"MAIL FROM:<a@b.org>\r\n")[-1][0] == 530
    driver.feed(b"AUTH PLAIN " + base64.b64encode(b"\0u\0secret") + b"\r\n")
    assert driver.feed(b"MAIL FROM:<a@b.org>\r\n")[-1][0] == 250


def test_config_validation() -> None:
    with pytest.raises(TypeError):
        SessionConfig(accepted_domains="example.com")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hostname"):
        SessionConfig(hostname="bad host")
    with pytest.raises(ValueError, match="RFC 5321"):
        SessionConfig(max_data_line=80)
    with pytest.raises(ValueError, match="auth"):
        SessionConfig(auth_required=True)
    with pytest.raises(ValueError):
        format_reply(99, "x")
    assert format_reply(250, ["a", "b\r\nc"]) == b"250-a\r\n250 b  c\r\n"


# ------------------------------------------------------------------- hostile input

HOSTILE_CONFIG = SessionConfig(
    accepted_domains={"example.com"},
    starttls=True,
    auth=True,
    auth_requires_tls=False,
    max_message_size=4000,
    max_recipients=3,
    max_errors=50,
)

FRAGMENTS = [
    b"EHLO x\r\n",
    b"HELO y\r\n",
    b"MAIL FROM:<a@b.org>\r\n",
    b"MAIL FROM:<> SMTPUTF8 BODY=8BITMIME\r\n",
    b"MAIL FROM:<a@b.org> SIZE=9999999\r\n",
    b"RCPT TO:<u@example.com>\r\n",
    b"RCPT TO:<u@other.net>\r\n",
    "RCPT TO:<ü@example.com>\r\n".encode(),
    b"DATA\r\n",
    b".\r\n",
    b"..\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY a\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b"AUTH PLAIN AHUAcw==\r\n",
    b"dXNlcg==\r\n",
    b"*\r\n",
    b"QUIT\r\n",
    b"\r\n",
    b"\r",
    b"\n",
    b"\x00\xff",
    b"x" * 700,
]

VALID_CODES = {211, 214, 220, 221, 235, 250, 252, 334, 354}
VALID_CODES |= {421, 450, 451, 452, 500, 501, 502, 503, 504, 530, 535, 550, 552, 553, 554, 555}


def _run_hostile(chunks: list[bytes], smtp, verdicts: list[bool]) -> None:
    conn = SMTPServerConnection(HOSTILE_CONFIG)
    decisions = iter(verdicts * 100)
    driver = smtp(
        conn,
        decide=lambda event: None if next(decisions, True) else (451, "4.3.0 later"),
        check_auth=lambda event: next(decisions, False),
    )
    driver.pump()
    for chunk in chunks:
        driver.feed(chunk)
        if driver.closed:
            break
    wire = bytes(driver.wire)
    assert wire.endswith(b"\r\n")
    for code, _ in driver_replies(wire):
        assert code in VALID_CODES


def driver_replies(wire: bytes) -> list[tuple[int, str]]:
    out = []
    for line in wire.split(b"\r\n")[:-1]:
        assert len(line) >= 4 and line[:3].isdigit() and line[3:4] in (b" ", b"-"), line
        assert len(line) + 2 <= 512, line  # RFC 5321 4.5.3.1.5: reply lines
        out.append((int(line[:3]), line[4:].decode()))
    return out


hostile_stream = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=40)), max_size=40
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=hostile_stream, verdicts=st.lists(st.booleans(), min_size=1, max_size=5))
def test_hostile_input_whole(smtp, chunks: list[bytes], verdicts: list[bool]) -> None:
    _run_hostile([b"".join(chunks)], smtp, verdicts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=hostile_stream, verdicts=st.lists(st.booleans(), min_size=1, max_size=5))
def test_hostile_input_byte_by_byte(smtp, chunks: list[bytes], verdicts: list[bool]) -> None:
    data = b"".join(chunks)
    _run_hostile([data[i : i + 1] for i in range(len(data))], smtp, verdicts)


@settings(max_examples=100, deadline=None)
@given(chunks=hostile_stream)
def test_whole_and_byte_by_byte_answer_the_same(smtp, chunks: list[bytes]) -> None:
    """Chunking never changes the conversation (STARTTLS aside: it drops what follows)."""
    data = b"".join(chunks)
    if b"STARTTLS" in data.upper():
        return
    whole = smtp(SMTPServerConnection(HOSTILE_CONFIG))
    whole.pump()
    if data:
        whole.feed(data)
    split = smtp(SMTPServerConnection(HOSTILE_CONFIG))
    split.pump()
    for i in range(len(data)):
        split.feed(data[i : i + 1])
    assert bytes(whole.wire) == bytes(split.wire)
    assert whole.messages == split.messages


def reference_unstuff(text: bytes) -> bytes | None:
    """RFC 5321 4.5.2 line by line: the message up to the first "." line, or None."""
    out = []
    rest = text
    while True:
        index = rest.find(b"\r\n")
        if index == -1:
            return None
        line, rest = rest[:index], rest[index + 2 :]
        if line == b".":
            return b"".join(out)
        out.append((line[1:] if line.startswith(b".") else line) + b"\r\n")


data_lines = st.lists(
    st.one_of(
        st.sampled_from([b".", b"..", b"...x", b".x", b"x.", b"\r", b"\n", b"\n.\n", b""]),
        st.binary(max_size=30),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(lines=data_lines, cut=st.integers(min_value=1, max_value=50))
def test_data_unstuffing_matches_the_rfc_line_by_line(smtp, lines: list[bytes], cut: int) -> None:
    text = b"\r\n".join(lines) + b"\r\n.\r\n"
    expected = reference_unstuff(text)
    driver, _ = open_session(smtp, HOSTILE_CONFIG)
    driver.feed(EHLO + b"MAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n")
    for start in range(0, len(text), cut):
        driver.feed(text[start : start + cut])
    if expected is not None and len(expected) <= HOSTILE_CONFIG.max_message_size:
        assert [m.data for m in driver.messages] == [expected]


def test_long_line_wins_over_size_whatever_the_chunking(smtp) -> None:
    config = SessionConfig(accepted_domains={"example.com"}, max_message_size=3000)
    text = (b"y" * 900 + b"\r\n") * 5 + b"z" * 1500 + b"\r\n.\r\n"
    for cut in (1, 7, 1000, len(text)):
        driver, _ = open_session(smtp, config)
        driver.feed(EHLO + b"MAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n")
        replies = []
        for start in range(0, len(text), cut):
            replies += driver.feed(text[start : start + cut])
        assert [code for code, _ in replies] == [500], cut
