"""The sans-IO IRC core: grammar, tags, splitting, flood control, the client machine.

Hostile input is fed whole and byte by byte: it parses or raises IrcProtocolError.
"""

from __future__ import annotations

import ast
import base64
import pathlib

import pytest
from csp_bus.adapters.irc import protocol
from csp_bus.adapters.irc.protocol import (
    MAX_LINE,
    ClientSettings,
    CommandFailed,
    FloodControl,
    InvalidControl,
    IrcClient,
    IrcProtocolError,
    Joined,
    Kicked,
    LagMeasured,
    Line,
    LineReader,
    NickChanged,
    OutboxFull,
    Received,
    Registered,
    RegistrationFailed,
    ServerError,
    UnsafeLine,
    UserMask,
    escape_tag_value,
    irc_lower,
    parse_line,
    split_text,
    unescape_tag_value,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csp_bus.errors import BusError, RemoteProtocolError, UsageError

# ----------------------------------------------------------------------- helpers


def drain(client: IrcClient, now: float = 0.0) -> list[bytes]:
    """Every line the client may write at ``now`` (flood control permitting)."""
    lines = []
    while True:
        line, _ = client.next_line(now)
        if line is None:
            return lines
        lines.append(line)


def feed(client: IrcClient, *lines: str, now: float = 0.0) -> list[object]:
    client.receive_data("".join(line + "\r\n" for line in lines).encode(), now)
    return list(client.events())


def registered(**options: object) -> IrcClient:
    options.setdefault("flood_burst", 50)
    client = IrcClient(ClientSettings(nick="bot", **options))  # type: ignore[arg-type]
    client.start()
    feed(client, ":srv CAP * LS :multi-prefix", ":srv CAP * ACK :multi-prefix")
    feed(client, ":srv 001 bot :Welcome", ":bot!~bot@bot.example JOIN #chan")
    drain(client)
    return client


# ----------------------------------------------------------------------- sans-IO


def test_protocol_module_never_imports_trio() -> None:
    tree = ast.parse(pathlib.Path(protocol.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported, "the import scan found nothing"
    assert not {name for name in imported if name.split(".")[0] in {"trio", "anyio", "asyncio"}}
    assert all(
        name.split(".")[0]
        in {
            "__future__",
            "base64",
            "contextlib",
            "re",
            "collections",
            "dataclasses",
            "typing",
            "csp_bus",
        }
        for name in imported
    )


def test_errors_belong_to_the_bus_tree() -> None:
    assert issubclass(IrcProtocolError, RemoteProtocolError)
    assert issubclass(UnsafeLine, InvalidControl)
    assert issubclass(InvalidControl, UsageError)
    assert issubclass(OutboxFull, BusError)


# ----------------------------------------------------------------------- grammar

PARSE_TABLE = [
    ("PING :irc.example", Line(command="PING", params=("irc.example",))),
    (
        ":nick!user@host PRIVMSG #chan :hello world",
        Line(command="PRIVMSG", params=("#chan", "hello world"), source="nick!user@host"),
    ),
    (
        ":srv 001 bot :Welcome to IRC",
        Line(command="001", params=("bot", "Welcome to IRC"), source="srv"),
    ),
    ("privmsg #a b", Line(command="PRIVMSG", params=("#a", "b"))),
    ("JOIN   #a   ", Line(command="JOIN", params=("#a",))),
    ("TOPIC #a :", Line(command="TOPIC", params=("#a", ""))),
    ("PRIVMSG #a ::-)", Line(command="PRIVMSG", params=("#a", ":-)"))),
    (
        "@time=2026-01-01T00:00:00Z;msgid=abc;+draft/x :n!u@h PRIVMSG #a :hi",
        Line(
            command="PRIVMSG",
            params=("#a", "hi"),
            source="n!u@h",
            tags={"time": "2026-01-01T00:00:00Z", "msgid": "abc", "+draft/x": ""},
        ),
    ),
    (
        r"@k=a\sb\:c\\d\r\ne\ :s CMD",
        Line(command="CMD", source="s", tags={"k": "a b;c\\d\r\ne"}),
    ),
    ("@a=1;a=2 CMD", Line(command="CMD", tags={"a": "2"})),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_TABLE)
def test_parse_table(text: str, expected: Line) -> None:
    assert parse_line(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        ":onlysource",
        "@tags",
        "@a=b :src",
        "PRIV-MSG x",
        "12 x",
        "1234 x",
        ": PRIVMSG",
        "@=v CMD",
        "CMD a\x00b",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(IrcProtocolError):
        parse_line(text)


def test_decoding_falls_back_to_latin1_per_line() -> None:
    reader = LineReader()
    reader.receive_data(b":a!b@c PRIVMSG #x :caf\xe9\r\n:a!b@c PRIVMSG #x :caf\xc3\xa9\r\n")
    assert reader.next_line().params[1] == "café"  # type: ignore[union-attr]
    assert reader.next_line().params[1] == "café"  # type: ignore[union-attr]
    assert reader.next_line() is None


def test_user_mask() -> None:
    assert UserMask.parse("n!u@h") == UserMask("n", "u", "h")
    assert UserMask.parse("irc.example.org") == UserMask("irc.example.org")
    assert UserMask.parse("n@h") == UserMask("n", None, "h")
    assert str(UserMask("n", "u", "h")) == "n!u@h"


def test_tag_escaping_examples() -> None:
    assert escape_tag_value("a b;c\\d\r\n") == r"a\sb\:c\\d\r\n"
    assert unescape_tag_value("trailing\\") == "trailing"
    assert unescape_tag_value(r"\b\q") == "bq"


def test_serialize_rules() -> None:
    assert (
        Line(command="PRIVMSG", params=("#a", "hi there")).to_bytes() == b"PRIVMSG #a :hi there\r\n"
    )
    assert Line(command="NICK", params=("bot",)).to_bytes() == b"NICK bot\r\n"
    assert Line(command="TOPIC", params=("#a", "")).to_bytes() == b"TOPIC #a :\r\n"
    assert Line(command="X", tags={"a": "1 2", "b": ""}).to_bytes() == b"@a=1\\s2;b X\r\n"
    with pytest.raises(UnsafeLine, match="'\\\\r' at position 2"):
        Line(command="PRIVMSG", params=("#a", "hi\rQUIT")).to_bytes()
    with pytest.raises(UnsafeLine):
        Line(command="PRIVMSG", params=("#a b", "x")).to_bytes()
    with pytest.raises(InvalidControl, match="only the last"):
        Line(command="PRIVMSG", params=(":a", "x")).to_bytes()
    with pytest.raises(InvalidControl, match="512"):
        Line(command="PRIVMSG", params=("#a", "x" * 600)).to_bytes()
    with pytest.raises(InvalidControl, match="command"):
        Line(command="PRIV MSG").to_bytes()


def test_irc_lower() -> None:
    assert irc_lower("Bot[A]\\~") == "bot{a}|^"
    assert irc_lower("Bot[A]", "ascii") == "bot[a]"


# -------------------------------------------------------------------- properties

_middle = st.text(
    st.characters(blacklist_characters="\r\n\x00 ", blacklist_categories=("Cs",)), min_size=1
).filter(lambda s: not s.startswith(":"))
_trailing = st.text(st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)))
_tag_key = st.from_regex(r"\+?([a-z0-9.-]+/)?[A-Za-z0-9-]+", fullmatch=True)
_tag_value = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))
_source = st.text(
    st.characters(blacklist_characters="\r\n\x00 ", blacklist_categories=("Cs",)), min_size=1
)


@st.composite
def lines(draw: st.DrawFn) -> Line:
    middles = draw(st.lists(_middle, max_size=5))
    last = draw(st.one_of(st.none(), _trailing))
    params = tuple(middles) + (() if last is None else (last,))
    return Line(
        command=draw(
            st.one_of(
                st.from_regex(r"[A-Z]{1,10}", fullmatch=True),
                st.from_regex(r"[0-9]{3}", fullmatch=True),
            )
        ),
        params=params,
        source=draw(st.one_of(st.none(), _source)),
        tags=draw(st.dictionaries(_tag_key, _tag_value, max_size=4)),
    )


@given(lines())
@settings(max_examples=300)
def test_round_trip(line: Line) -> None:
    text = line.to_str()
    assert "\r" not in text and "\n" not in text and "\x00" not in text
    assert parse_line(text) == line
    assert parse_line(text.encode()) == line


def _collect(reader: LineReader) -> list[object]:
    out: list[object] = []
    while True:
        try:
            line = reader.next_line()
        except IrcProtocolError as exc:
            out.append(type(exc))
            continue
        if line is None:
            return out
        out.append(line)


hostile = st.one_of(
    st.binary(max_size=600),
    st.lists(
        st.sampled_from(
            [
                b"@",
                b":",
                b" ",
                b"\r",
                b"\n",
                b"\x00",
                b"PRIVMSG",
                b"001",
                b"\\",
                b";",
                b"=",
                b"#c",
                b"\xff",
                b"\xc3",
                b"\x01",
                b"!",
                b"@h",
            ]
        ),
        max_size=60,
    ).map(b"".join),
)


@given(hostile)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_hostile_bytes_whole_and_byte_by_byte(data: bytes) -> None:
    whole = LineReader()
    whole.receive_data(data)
    whole.receive_data(b"")
    bytewise = LineReader()
    for index in range(len(data)):
        bytewise.receive_data(data[index : index + 1])
    bytewise.receive_data(b"")
    assert _collect(whole) == _collect(bytewise)


@given(hostile)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_hostile_bytes_into_the_client(data: bytes) -> None:
    for client_data in (data, b":srv 001 bot :hi\r\n" + data):
        client = IrcClient(ClientSettings(nick="bot"))
        client.start()
        for index in range(len(client_data)):
            client.receive_data(client_data[index : index + 1])
            while True:
                try:
                    if client.next_event() is None:
                        break
                except IrcProtocolError:
                    continue
        for line in drain(client):
            assert line.endswith(b"\r\n") and len(line) <= MAX_LINE
            assert b"\r" not in line[:-2] and b"\n" not in line[:-2] and b"\x00" not in line


def _client_events(chunks: list[bytes]) -> list[object]:
    client = IrcClient(ClientSettings(nick="bot", flood_burst=1000))
    client.start()
    out: list[object] = []
    for chunk in chunks:
        client.receive_data(chunk)
        while True:
            try:
                event = client.next_event()
            except IrcProtocolError:
                out.append(IrcProtocolError)
                continue
            if event is None:
                break
            out.append(event)
    out.extend(drain(client))
    return out


@given(hostile)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_client_sees_the_same_whole_or_byte_by_byte(data: bytes) -> None:
    data = b":srv 001 bot :hi\r\n" + data + b"\r\n:a!b@c PRIVMSG #x :end\r\n"
    whole = _client_events([data])
    bytewise = _client_events([data[i : i + 1] for i in range(len(data))])
    assert whole == bytewise
    end = Received(type="message", user=UserMask("a", "b", "c"), channel="#x", body="end")
    closed = any(isinstance(event, (ServerError, RegistrationFailed)) for event in whole)
    assert closed or end in whole  # hostile lines never swallow the lines after them


def test_a_ping_flood_is_bounded() -> None:
    client = registered()
    client.receive_data(b"PING :x\r\n" * 1500)
    events = list(client.events())
    assert events == [ServerError(reason="server flood: too many replies pending")]
    assert client.pending_lines() == 1000
    assert client.state == "closed"


def test_overlong_line_is_discarded_and_reading_goes_on() -> None:
    reader = LineReader(max_line=100)
    reader.receive_data(b"PRIVMSG #a :" + b"x" * 200)
    reader.receive_data(b"y" * 50 + b"\r\nPING :ok\r\n")
    with pytest.raises(IrcProtocolError, match="longer than 100"):
        reader.next_line()
    assert reader.next_line() == Line(command="PING", params=("ok",))


@given(st.text(), st.integers(min_value=4, max_value=600))
def test_split_text(text: str, limit: int) -> None:
    pieces = split_text(text, limit)
    assert all(pieces)
    position = 0
    for index, piece in enumerate(pieces):
        assert len(piece.encode("utf-8", "surrogatepass")) <= limit
        assert text.startswith(piece, position)
        position += len(piece)
        if (
            index < len(pieces) - 1
            and text[position] == " "
            and not text.startswith(pieces[index + 1], position)
        ):
            position += 1  # a word break consumes exactly one space
    assert position == len(text)


def test_split_text_never_cuts_a_utf8_sequence() -> None:
    text = "é" * 300 + "😀" * 100
    pieces = split_text(text, 51)
    for piece in pieces:
        piece.encode("utf-8").decode("utf-8")  # every piece is whole characters
        assert len(piece.encode()) <= 51
    assert "".join(pieces) == text


def test_split_text_prefers_word_boundaries() -> None:
    pieces = split_text("the quick brown fox jumps", 12)
    assert pieces == ["the quick", "brown fox", "jumps"]
    assert split_text("abcdefghijklmnop qr", 8) == ["abcdefgh", "ijklmnop", " qr"]  # hard cut


# ------------------------------------------------------------------ flood control


def test_token_bucket() -> None:
    bucket = FloodControl(burst=3, rate=2.0)
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.delay(10.0) == pytest.approx(0.5)
    assert bucket.take(10.5)
    assert not bucket.take(10.5)
    assert bucket.take(100.0)  # refilled, capped at burst
    assert [bucket.take(100.0) for _ in range(3)] == [True, True, False]
    assert bucket.take(100.0, force=True)  # protocol lines go anyway, without debt
    assert bucket.delay(100.0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        FloodControl(burst=0)


def test_flood_control_paces_application_lines() -> None:
    client = registered(flood_burst=2, flood_rate=1.0)
    client.control({"type": "message", "channel": "#chan", "body": "a\nb\nc\nd"})
    assert len(drain(client, 10.0)) == 2
    line, wait = client.next_line(10.0)
    assert line is None and wait == pytest.approx(1.0)
    assert len(drain(client, 11.0)) == 1
    feed(client, "PING :x")  # a PONG never waits for the bucket
    assert drain(client, 11.0) == [b"PONG x\r\n"]
    assert len(drain(client, 12.0)) == 1


def test_outbox_is_bounded() -> None:
    client = registered(outbox_limit=3, flood_burst=1, flood_rate=0.001)
    client.control({"type": "message", "channel": "#chan", "body": "1\n2\n3"})
    with pytest.raises(OutboxFull):
        client.control({"type": "message", "channel": "#chan", "body": "4"})
    assert client.pending_lines() == 3


# ------------------------------------------------------------------ registration


def test_registration_with_caps_and_joins() -> None:
    client = IrcClient(ClientSettings(nick="bot", password="pw", channels=("#a", "#b key")))
    client.start()
    assert drain(client) == [
        b"CAP LS 302\r\n",
        b"PASS pw\r\n",
        b"NICK bot\r\n",
        b"USER cspbus 0 * :csp-bus IRC adapter\r\n",
    ]
    assert feed(client, ":srv CAP * LS * :multi-prefix message-tags") == []
    assert drain(client) == []  # waits for the last LS line
    feed(client, ":srv CAP * LS :server-time away-notify")
    assert drain(client) == [b"CAP REQ :message-tags server-time multi-prefix\r\n"]
    feed(client, ":srv CAP * ACK :message-tags server-time multi-prefix")
    assert drain(client) == [b"CAP END\r\n"]
    events = feed(
        client, ":srv 005 bot CASEMAPPING=ascii NICKLEN=16 :are supported", ":srv 001 bot :Welcome"
    )
    assert events == [Registered(nick="bot", server_name="srv")]
    assert client.casemapping == "ascii" and client.nicklen == 16
    assert drain(client) == [b"JOIN #b,#a key\r\n"]
    events = feed(client, ":bot!~b@h JOIN #b", ":bot!~b@h JOIN :#a")
    assert events == [Joined(channel="#b"), Joined(channel="#a")]
    assert client.user_mask == UserMask("bot", "~b", "h")


def test_registration_without_cap_support() -> None:
    client = IrcClient(ClientSettings(nick="bot", channels=("#a",)))
    client.start()
    drain(client)
    events = feed(client, ":srv 421 * CAP :Unknown command", ":srv 001 bot :hi")
    assert events == [Registered(nick="bot", server_name="srv")]


def test_sasl_plain() -> None:
    client = IrcClient(ClientSettings(nick="bot", sasl_username="acct", sasl_password="secret"))
    client.start()
    drain(client)
    feed(client, ":srv CAP * LS :sasl=PLAIN,EXTERNAL")
    assert drain(client) == [b"CAP REQ sasl\r\n"]
    feed(client, ":srv CAP * ACK :sasl")
    assert drain(client) == [b"AUTHENTICATE PLAIN\r\n"]
    feed(client, "AUTHENTICATE +")
    payload = base64.b64encode(b"acct\0acct\0secret")
    assert drain(client) == [b"AUTHENTICATE " + payload + b"\r\n"]
    feed(
        client,
        ":srv 900 bot bot!u@h acct :You are now logged in",
        ":srv 903 bot :SASL authentication successful",
    )
    assert drain(client) == [b"CAP END\r\n"]
    assert feed(client, ":srv 001 bot :hi") == [Registered(nick="bot", server_name="srv")]


def test_sasl_long_payload_is_chunked() -> None:
    client = IrcClient(ClientSettings(nick="bot", sasl_username="a" * 150, sasl_password="p" * 146))
    client.start()
    feed(client, ":srv CAP * LS :sasl", ":srv CAP * ACK :sasl", "AUTHENTICATE +")
    sent = [line for line in drain(client) if line.startswith(b"AUTHENTICATE ")]
    # 150+1+150+1+146 = 448 bytes -> 600 base64 chars -> 400 + 200
    assert [len(line) for line in sent[1:]] == [
        len(b"AUTHENTICATE \r\n") + 400,
        len(b"AUTHENTICATE \r\n") + 200,
    ]
    exact = IrcClient(ClientSettings(nick="bot", sasl_username="a" * 100, sasl_password="p" * 98))
    exact.start()
    feed(exact, ":srv CAP * LS :sasl", ":srv CAP * ACK :sasl", "AUTHENTICATE +")
    assert drain(exact)[-1] == b"AUTHENTICATE +\r\n"  # 300 bytes -> exactly 400 chars


def test_sasl_failure_is_fatal_when_required() -> None:
    client = IrcClient(ClientSettings(nick="bot", sasl_username="a", sasl_password="b"))
    client.start()
    feed(client, ":srv CAP * LS :sasl", ":srv CAP * ACK :sasl", "AUTHENTICATE +")
    events = feed(client, ":srv 904 bot :SASL authentication failed")
    assert isinstance(events[0], RegistrationFailed) and "904" in events[0].reason
    assert client.state == "closed"

    lenient = IrcClient(
        ClientSettings(nick="bot", sasl_username="a", sasl_password="b", sasl_required=False)
    )
    lenient.start()
    drain(lenient)
    feed(lenient, ":srv CAP * LS :multi-prefix", ":srv CAP * ACK :multi-prefix")  # no sasl
    assert b"CAP END\r\n" in drain(lenient)

    no_cap = IrcClient(ClientSettings(nick="bot", sasl_username="a", sasl_password="b"))
    no_cap.start()
    events = feed(no_cap, ":srv 001 bot :welcome")
    assert isinstance(events[0], RegistrationFailed)


def test_nick_collision_tries_alternatives() -> None:
    client = IrcClient(ClientSettings(nick="bot", alt_nicks=("botty",), max_nick_attempts=5))
    client.start()
    drain(client)
    assert feed(client, ":srv 433 * bot :Nickname is already in use") == [
        NickChanged(old="bot", new="botty")
    ]
    assert drain(client) == [b"NICK botty\r\n"]
    feed(client, ":srv 433 * botty :in use")
    assert drain(client) == [b"NICK bot_\r\n"]
    feed(client, ":srv 432 * bot_ :Erroneous")
    assert drain(client) == [b"NICK bot__\r\n"]
    feed(client, ":srv 433 * bot__ :in use")
    assert drain(client) == [b"NICK bot1\r\n"]
    events = feed(client, ":srv 433 * bot1 :in use")
    assert isinstance(events[-1], RegistrationFailed)


def test_alternative_nicks_respect_nicklen() -> None:
    client = IrcClient(ClientSettings(nick="ninechars"))
    client.start()
    feed(client, ":srv 005 * NICKLEN=9 :are supported", ":srv 433 * ninechars :in use")
    assert drain(client)[-1] == b"NICK ninechar_\r\n"


def test_nick_error_after_registration_is_reported() -> None:
    client = registered()
    client.control({"type": "nick", "body": "taken"})
    assert drain(client) == [b"NICK taken\r\n"]
    events = feed(client, ":srv 433 bot taken :Nickname is already in use")
    assert events == [CommandFailed(code="433", params=("taken", "Nickname is already in use"))]
    assert client.nick == "bot"
    assert feed(client, ":bot!~bot@bot.example NICK :newbot") == [
        NickChanged(old="bot", new="newbot")
    ]
    assert client.nick == "newbot"


def test_fatal_registration_numerics() -> None:
    client = IrcClient(ClientSettings(nick="bot", password="wrong"))
    client.start()
    events = feed(client, ":srv 464 * :Password incorrect")
    assert events == [RegistrationFailed(reason="464 Password incorrect")]


# -------------------------------------------------------------------- traffic


def test_ping_pong_and_lag() -> None:
    client = registered()
    feed(client, "PING :irc.example")
    assert drain(client) == [b"PONG irc.example\r\n"]
    assert client.lag_check(100.0, timeout=30)
    assert drain(client) == [b"PING csp-bus-lag-1\r\n"]
    assert client.lag_check(110.0, timeout=30)  # outstanding, not late yet: no new PING
    assert drain(client) == []
    assert feed(client, ":srv PONG srv :csp-bus-lag-1", now=100.25) == [LagMeasured(seconds=0.25)]
    assert client.lag == 0.25
    assert client.lag_check(200.0, timeout=30)
    assert not client.lag_check(231.0, timeout=30)


def test_traffic_becomes_receive_messages() -> None:
    client = registered()
    events = feed(
        client,
        "@time=2026-01-01T00:00:00Z :al!~al@h PRIVMSG #chan :!hello there",
        ":al!~al@h PRIVMSG bot :a private word",
        ":al!~al@h PRIVMSG #chan :\x01ACTION waves\x01",
        ":al!~al@h NOTICE #chan :note",
        ":srv NOTICE bot :*** server notice",
        ":bo!~bo@h JOIN #chan",
        ":bo!~bo@h PART #chan :bye",
        ":bo!~bo@h QUIT :Quit: gone",
        ":al!~al@h NICK alice",
        ":al!~al@h TOPIC #chan :new topic",
        ":op!~op@h KICK #chan someone :behave",
    )
    al = UserMask("al", "~al", "h")
    bo = UserMask("bo", "~bo", "h")
    assert events == [
        Received(
            type="message",
            user=al,
            channel="#chan",
            body="!hello there",
            tags={"time": "2026-01-01T00:00:00Z"},
        ),
        Received(type="message", user=al, channel="bot", body="a private word"),
        Received(type="action", user=al, channel="#chan", body="waves"),
        Received(type="notice", user=al, channel="#chan", body="note"),
        Received(type="notice", user=UserMask("srv"), channel="bot", body="*** server notice"),
        Received(type="join", user=bo, channel="#chan", body=""),
        Received(type="part", user=bo, channel="#chan", body="bye"),
        Received(type="quit", user=bo, channel=None, body="Quit: gone"),
        Received(type="nick", user=al, channel=None, body="alice"),
        Received(type="topic", user=al, channel="#chan", body="new topic"),
        Received(
            type="kick",
            user=UserMask("op", "~op", "h"),
            channel="#chan",
            body="behave",
            target="someone",
        ),
    ]
    message = events[0].to_message("irc-client.x!s0")  # type: ignore[union-attr]
    assert message == {
        "reply_channel": "irc-client.x!s0",
        "type": "message",
        "user": {"nick": "al", "user": "~al", "host": "h"},
        "channel": "#chan",
        "body": "!hello there",
        "tags": {"time": "2026-01-01T00:00:00Z"},
    }


def test_ctcp_version_and_ping_are_answered_not_delivered() -> None:
    client = registered()
    assert (
        feed(
            client,
            ":al!~al@h PRIVMSG bot :\x01VERSION\x01",
            ":al!~al@h PRIVMSG bot :\x01PING 123\x01",
        )
        == []
    )
    assert drain(client) == [
        b"NOTICE al :\x01VERSION csp-bus IRC adapter\x01\r\n",
        b"NOTICE al :\x01PING 123\x01\r\n",
    ]
    assert feed(client, ":al!~al@h NOTICE bot :\x01VERSION other\x01") == []
    assert drain(client) == []


def test_kick_of_the_bot() -> None:
    client = registered(channels=("#chan",))
    events = feed(client, ":op!~op@h KICK #chan bot :out")
    assert events[1] == Kicked(channel="#chan", by="op", reason="out")
    assert "#chan" not in client.channels
    client.rejoin("#chan")
    assert drain(client) == [b"JOIN #chan\r\n"]
    feed(client, ":bot!~bot@bot.example JOIN #chan")
    client.rejoin("#chan")  # already back: nothing to do
    assert drain(client) == []


def test_error_from_server() -> None:
    client = registered()
    assert feed(client, "ERROR :Closing link: (flood)") == [
        ServerError(reason="Closing link: (flood)")
    ]
    assert client.state == "closed"


def test_quit_line() -> None:
    client = registered()
    assert client.quit("bye\r\nPRIVMSG #x :owned") == b"QUIT :bye PRIVMSG #x :owned\r\n"
    assert client.state == "closed"


# ------------------------------------------------------------------ control


def test_control_messages() -> None:
    client = registered()
    client.control({"type": "join", "channel": "#new"})
    client.control({"type": "join", "channel": "#locked", "key": "sesame"})
    client.control({"type": "part", "channel": "#new", "body": "later"})
    client.control({"type": "message", "channel": "#chan", "body": "hi"})
    client.control({"type": "action", "channel": "#chan", "body": "dances"})
    client.control({"type": "notice", "channel": "al", "body": "psst"})
    client.control({"type": "nick", "body": "bot2"})
    client.control({"type": "topic", "channel": "#chan", "body": "Topic"})
    client.control({"type": "raw", "body": "MODE #chan +o al"})
    assert drain(client) == [
        b"JOIN #new\r\n",
        b"JOIN #locked sesame\r\n",
        b"PART #new later\r\n",
        b"PRIVMSG #chan hi\r\n",
        b"PRIVMSG #chan :\x01ACTION dances\x01\r\n",
        b"NOTICE al psst\r\n",
        b"NICK bot2\r\n",
        b"TOPIC #chan Topic\r\n",
        b"MODE #chan +o al\r\n",
    ]


@pytest.mark.parametrize(
    ("message", "error", "match"),
    [
        (
            {"type": "raw", "body": "PRIVMSG #a :hi\r\nQUIT"},
            UnsafeLine,
            r"raw: character '\\r' at position 14",
        ),
        ({"type": "raw", "body": "PRIVMSG #a :hi\nQUIT"}, UnsafeLine, r"'\\n' at position 14"),
        ({"type": "raw", "body": "PRIVMSG #a :\x00"}, UnsafeLine, r"'\\x00'"),
        ({"type": "raw", "body": "PRIVMSG #a :" + "x" * 600}, InvalidControl, "512"),
        ({"type": "raw", "body": ""}, InvalidControl, "not an IRC line"),
        ({"type": "message", "channel": "#a\r\nQUIT", "body": "x"}, UnsafeLine, "channel"),
        ({"type": "message", "channel": "#a,#b", "body": "x"}, UnsafeLine, "separates targets"),
        ({"type": "message", "channel": "#a b", "body": "x"}, UnsafeLine, "separates param"),
        ({"type": "message", "channel": "#a", "body": "x\x00y"}, UnsafeLine, "body"),
        ({"type": "message", "body": "x"}, InvalidControl, "channel must be"),
        ({"type": "message", "channel": "#a", "body": 5}, InvalidControl, "body must be a str"),
        ({"type": "shout", "channel": "#a"}, InvalidControl, "type must be one of"),
        ({"channel": "#a", "body": "x"}, InvalidControl, "type must be one of"),
        ({"type": "nick", "body": "a b"}, UnsafeLine, "body"),
        ({"type": "nick", "body": "bot\r\nQUIT"}, UnsafeLine, "body"),
        ({"type": "join", "channel": "#a", "key": "k\nQUIT"}, UnsafeLine, "key"),
    ],
)
def test_control_refusals(message: dict[str, object], error: type[Exception], match: str) -> None:
    client = registered()
    with pytest.raises(error, match=match):
        client.control(message)
    assert drain(client) == []


def test_line_breaks_in_bodies_become_separate_messages() -> None:
    client = registered()
    assert (
        client.control(
            {"type": "message", "channel": "#chan", "body": "one\r\ntwo\rthree\n\nQUIT :x"}
        )
        == 4
    )
    assert drain(client) == [
        b"PRIVMSG #chan one\r\n",
        b"PRIVMSG #chan two\r\n",
        b"PRIVMSG #chan three\r\n",
        b"PRIVMSG #chan :QUIT :x\r\n",
    ]
    client.control({"type": "part", "channel": "#chan", "body": "a\nb"})
    client.control({"type": "topic", "channel": "#chan", "body": "a\r\nb"})
    assert drain(client) == [b"PART #chan :a b\r\n", b"TOPIC #chan :a b\r\n"]


def test_long_text_is_split_so_relayed_lines_fit() -> None:
    client = registered(flood_burst=100)
    mask = ":bot!~bot@bot.example "
    body = ("Lorem ipsum dolor sit amet, ünïcödé 😀 " * 60)[:2000]
    count = client.control({"type": "message", "channel": "#chan", "body": body})
    lines = drain(client)
    assert count == len(lines) >= 4
    texts = []
    for line in lines:
        assert len(mask.encode()) + len(line) <= MAX_LINE  # as the server relays it
        assert line.count(b"\r\n") == 1
        texts.append(parse_line(line[:-2]).params[1])
    assert " ".join(texts) == body  # every cut fell on a space here
    # action pieces carry the CTCP framing and still fit
    client.control({"type": "action", "channel": "#chan", "body": "é" * 1000})
    for line in drain(client):
        assert len(mask.encode()) + len(line) <= MAX_LINE
        assert parse_line(line[:-2]).params[1].startswith("\x01ACTION ")


def test_unknown_mask_assumes_long_hosts() -> None:
    client = IrcClient(ClientSettings(nick="bot", flood_burst=100))
    client.start()
    feed(client, ":srv 001 bot :hi")
    drain(client)
    client.control({"type": "message", "channel": "#chan", "body": "x" * 2000})
    worst = ":bot!" + "u" * 10 + "@" + "h" * 63 + " "
    for line in drain(client):
        assert len(worst) + len(line) <= MAX_LINE


@given(st.text(), st.sampled_from(["message", "action", "notice", "part", "topic", "raw", "nick"]))
@settings(max_examples=300)
def test_no_control_body_ever_injects_a_line(body: str, kind: str) -> None:
    client = registered(flood_burst=1000, outbox_limit=1000)
    try:
        client.control({"type": kind, "channel": "#chan", "body": body})
    except InvalidControl:
        assert drain(client) == []
        return
    for line in drain(client):
        assert line.endswith(b"\r\n") and len(line) <= MAX_LINE
        inner = line[:-2]
        assert b"\r" not in inner and b"\n" not in inner and b"\x00" not in inner
        parse_line(inner)


def test_settings_validation() -> None:
    with pytest.raises(UnsafeLine):
        ClientSettings(nick="bot\r\n")
    with pytest.raises(InvalidControl, match="SASL needs both"):
        ClientSettings(nick="bot", sasl_username="x")
    with pytest.raises(InvalidControl, match="empty"):
        ClientSettings(nick="")
    with pytest.raises(UnsafeLine):
        ClientSettings(nick="bot", channels=("#a,#b",))
