"""email.receive parsing and email.send construction (pure, no sockets)."""

from __future__ import annotations

import email
import email.policy

import pytest
from csp_bus.adapters.email.messages import (
    InvalidEmail,
    build_outgoing,
    receive_message,
)
from csp_bus.adapters.email.protocol import MessageReceived
from hypothesis import given, settings
from hypothesis import strategies as st

from csp_bus.errors import InvalidMessage, UsageError
from csp_bus.messages import decode, encode, validate_message


def received(data: bytes, **kw) -> dict:
    event = MessageReceived(
        sender=kw.pop("sender", "a@example.org"),
        recipients=kw.pop("recipients", ("support@example.com",)),
        data=data,
        helo="client.example.org",
        **kw,
    )
    return receive_message(event, client=("127.0.0.1", 40000))


def test_plain_message_fields() -> None:
    raw = (
        b"From: =?utf-8?q?J=C3=B6rg?= <j@example.org>\r\n"
        b"Subject: =?iso-8859-1?q?Gr=FC=DFe?=\r\n"
        b"Received: from a\r\nReceived: from b\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"caf=C3=A9\r\n"
    )
    message = received(raw)
    validate_message(message)
    assert message["from"] == "a@example.org"
    assert message["to"] == ["support@example.com"]
    assert message["headers"]["subject"] == "Grüße"
    assert message["headers"]["from"] == "Jörg <j@example.org>"
    assert message["headers"]["received"] == "from a\nfrom b"
    folded = received(b"Subject: a\r\n  folded\r\n\tline\r\nX-Empty:\r\n\r\n")["headers"]
    assert folded == {"subject": "a  folded\tline", "x-empty": ""}
    assert message["content"] == {
        "content-type": "text/plain; charset=utf-8",  # as sent
        "body": "café\r\n".encode(),
    }
    assert message["message"] == raw
    assert message["client"] == ["127.0.0.1", 40000]
    assert message["helo"] == "client.example.org"


def test_null_sender_and_missing_content_type() -> None:
    message = received(b"Subject: x\r\n\r\nhello\r\n", sender=None)
    assert message["from"] is None
    assert message["content"]["content-type"] == "text/plain"
    assert message["content"]["body"] == b"hello\r\n"


def test_multipart_round_trip_through_build_outgoing() -> None:
    outgoing = build_outgoing(
        {
            "from": "Shop <shop@example.com>",
            "to": ["a@example.org"],
            "cc": "c@example.org",
            "bcc": ["hidden@example.org"],
            "subject": "Invoice",
            "text": "See attached.\n",
            "html": "<p>See attached.</p>",
            "attachments": [
                {"filename": "inv.pdf", "content_type": "application/pdf", "content": b"%PDF\0"}
            ],
            "headers": {"In-Reply-To": "<m1@example.org>", "Auto-Submitted": "auto-replied"},
        }
    )
    assert outgoing.sender == "shop@example.com"
    assert outgoing.recipients == ("a@example.org", "c@example.org", "hidden@example.org")
    assert not outgoing.smtputf8
    assert outgoing.data.isascii()
    assert b"hidden@example.org" not in outgoing.data  # bcc is envelope only
    message = received(outgoing.data)
    top = message["content"]
    assert top["content-type"].startswith("multipart/mixed")
    alternative, attachment = top["parts"]
    assert [p["body"] for p in alternative["parts"]] == [
        b"See attached.\r\n",
        b"<p>See attached.</p>\r\n",
    ]
    assert attachment == {
        "content-type": "application/pdf",
        "filename": "inv.pdf",
        "body": b"%PDF\0",
    }
    assert message["headers"]["in-reply-to"] == "<m1@example.org>"
    assert decode(encode(message)) == message


def test_non_ascii_text_without_smtputf8_is_quoted_printable() -> None:
    outgoing = build_outgoing(
        {"from": "a@example.com", "to": "b@example.org", "subject": "Ça va", "text": "été\n"}
    )
    assert outgoing.data.isascii() and not outgoing.smtputf8
    parsed = email.message_from_bytes(outgoing.data, policy=email.policy.default)
    assert parsed["subject"] == "Ça va"
    assert parsed.get_content() == "été\r\n"


def test_non_ascii_address_needs_smtputf8() -> None:
    outgoing = build_outgoing(
        {"from": "jörg@exämple.de", "to": "b@example.org", "subject": "x", "text": "y"}
    )
    assert outgoing.smtputf8 and outgoing.sender == "jörg@exämple.de"


def test_raw_message_and_null_return_path() -> None:
    raw = b"Subject: raw\r\n\r\nbody\r\n"
    outgoing = build_outgoing(
        {"from": "a@example.com", "to": ["b@example.org"], "message": raw, "return_path": None}
    )
    assert outgoing.data == raw and outgoing.sender == ""


BASE = {"from": "a@x.org", "to": "b@x.org", "subject": "s", "text": "t"}


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"from": None}, "message['from']"),
        ({"to": None}, "message['to']"),
        ({"subject": "s\r\nBcc: e@v.il"}, "message['subject']"),
        ({"from": "a@x.org\r\nBcc: e@v.il"}, "message['from']"),
        ({"to": ["b@x.org", "c@x.org\nX: y"]}, "message['to'][1]"),
        ({"to": "b@x.org, c@x.org"}, "message['to'][0]"),
        ({"headers": {"X-A": "1\r\nBcc: e@v.il"}}, "message['headers']['X-A']"),
        ({"headers": {"Bcc: x\r\nA": "1"}}, "message['headers']['Bcc: x\\r\\nA']"),
        ({"headers": {"Subject": "2"}}, "message['headers']['Subject']"),
        (
            {"attachments": [{"filename": "a\r\nb", "content": b""}]},
            "message['attachments'][0]['filename']",
        ),
        (
            {"attachments": [{"filename": "a", "content_type": "text/plain\r\nX: y"}]},
            "message['attachments'][0]['content_type']",
        ),
        ({"text": None}, "message['text']"),
        ({"subject": None}, "message['subject']"),
        ({"message": "str", "subject": None, "text": None}, "message['message']"),
        ({"message": b"x", "text": None}, "message['subject']"),
        ({"sbject": "typo"}, "message['sbject']"),
        ({"return_path": "x\ny"}, "message['return_path']"),
    ],
)
def test_header_injection_and_bad_fields_are_refused(change: dict, path: str) -> None:
    message = {**BASE, **change}
    message = {key: value for key, value in message.items() if value is not None}
    with pytest.raises(InvalidEmail) as info:
        build_outgoing(message)
    assert info.value.path == path
    assert isinstance(info.value, InvalidMessage) and isinstance(info.value, UsageError)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2000))
def test_any_bytes_make_a_valid_bus_message(data: bytes) -> None:
    message = received(data)
    validate_message(message)
    assert message["message"] == data


mime_ish = st.lists(
    st.sampled_from(
        [
            b"Content-Type: multipart/mixed; boundary=b\r\n",
            b"Content-Type: message/rfc822\r\n",
            b"Content-Transfer-Encoding: base64\r\n",
            b"Content-Transfer-Encoding: quoted-printable\r\n",
            b"Subject: =?utf-8?b?w6k=?= =?bogus?q?x?= =?utf-8?q?\r\n",
            b'From: <<@>>,"\r\n',
            b"To: a@b, =?utf-8?q?=FF?= <c@d>\r\n",
            b"Content-Disposition: attachment; filename*=utf-8''%FF%FE\r\n",
            b"\r\n",
            b"--b\r\n",
            b"--b--\r\n",
            b"=ZZ=\r\n",
            b"AAAA====\r\n",
            b"\xff\xfe\r\n",
        ]
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(lines=mime_ish)
def test_hostile_mime_makes_a_valid_bus_message(lines: list[bytes]) -> None:
    data = b"".join(lines)
    message = received(data)
    validate_message(message)
    encode(message)
