"""``email.receive`` and ``email.send``: bus messages <-> RFC 5322 mail. Pure, no I/O.

``email.receive`` follows the ASGI 1.x email draft and completes it (``docs/email.md``):
``from``, ``to``, ``headers``, ``content``, plus ``message`` -- the raw bytes as received,
so nothing is ever lost to parsing -- and the session facts ``helo``, ``client``, ``tls``,
``auth_user``.

``email.send`` is turned into an :class:`OutgoingEmail` (envelope + bytes). Every field
that ends up in a header is refused when it holds CR or LF: header injection through a
message field is impossible, and the error names the field.
"""

from __future__ import annotations

import email.header
import email.policy
import email.utils
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any, Final

from csp_bus.errors import InvalidMessage
from csp_bus.messages import Message as BusMessage

from .protocol import MessageReceived

__all__ = [
    "RECEIVE_CHANNEL",
    "SEND_CHANNEL",
    "InvalidEmail",
    "OutgoingEmail",
    "build_outgoing",
    "content_of",
    "receive_message",
]

RECEIVE_CHANNEL: Final = "email.receive"
SEND_CHANNEL: Final = "email.send"

# Deeper MIME nesting than this is left as one opaque body (the raw message keeps it all).
_MAX_DEPTH: Final = 20


class InvalidEmail(InvalidMessage):
    """An ``email.send`` message cannot become mail; ``path`` names the bad field."""


# --------------------------------------------------------------------------- receiving


def _decode_raw(name: str, raw: str) -> str:
    """A raw header value as text, unfolded, RFC 2047 encoded words decoded.

    Without encoded words that is the unfolded value itself (the fast path: parsing a
    header with policy.default costs ~50 us, three quarters of a small message's
    parse). With them, policy.default's parse; on the headers its parser chokes on
    (malformed addresses can raise IndexError deep inside the stdlib), the encoded words
    decoded one by one, or the raw text itself.
    """
    if "=?" not in raw:
        return "".join(raw.splitlines()).strip()
    try:
        return str(email.policy.default.header_fetch_parse(name, raw))
    except Exception:
        pass
    try:
        return str(email.header.make_header(email.header.decode_header(raw)))
    except Exception:
        return raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _safe_text(value: str) -> str:
    """Text that survives the bus: surrogates from undecodable bytes become U+FFFD."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _headers(message: Message) -> dict[str, str]:
    """Names lower-cased; a repeated header (Received) keeps every value, joined by
    ``"\\n"`` -- a character an unfolded header value never contains."""
    headers: dict[str, str] = {}
    for name, raw in message.raw_items():
        key = _safe_text(name.lower())
        text = _safe_text(_decode_raw(name, str(raw))).replace("\r", "").replace("\n", " ")
        headers[key] = f"{headers[key]}\n{text}" if key in headers else text
    return headers


def content_of(part: Message, depth: int = 0) -> dict[str, Any]:
    """The content object of one MIME part: ``content-type`` plus ``parts`` or ``body``.

    ``body`` is bytes after Content-Transfer-Encoding decoding. A part that names a file
    also has ``filename``.
    """
    raw_type = next((v for n, v in part.raw_items() if n.lower() == "content-type"), None)
    if raw_type is None:
        content_type = "text/plain"
    else:
        content_type = _safe_text(_decode_raw("content-type", str(raw_type)))
    content: dict[str, Any] = {"content-type": content_type}
    try:
        filename = part.get_filename()
    except Exception:
        filename = None
    if filename:
        content["filename"] = _safe_text(str(filename))
    payload: Any
    try:
        payload = part.get_payload()
    except Exception:
        payload = None
    if isinstance(payload, list) and depth < _MAX_DEPTH:
        content["parts"] = [
            content_of(sub, depth + 1) for sub in payload if isinstance(sub, Message)
        ]
        return content
    try:
        body = part.get_payload(decode=True)
    except Exception:
        body = None
    if not isinstance(body, bytes):
        body = b""
        if isinstance(payload, list):  # nested deeper than _MAX_DEPTH: keep it opaque
            try:
                body = part.as_bytes()
            except Exception:
                body = b""
    content["body"] = body
    return content


def receive_message(event: MessageReceived, *, client: tuple[str, int] | None = None) -> BusMessage:
    """The ``email.receive`` message for a received mail."""
    parsed = BytesParser(policy=email.policy.default).parsebytes(event.data)
    return {
        "from": event.sender,
        "to": list(event.recipients),
        "headers": _headers(parsed),
        "content": content_of(parsed),
        "message": event.data,
        "helo": event.helo,
        "client": list(client) if client is not None else None,
        "tls": event.tls,
        "auth_user": event.auth_user,
    }


# ----------------------------------------------------------------------------- sending


@dataclass(frozen=True, kw_only=True)
class OutgoingEmail:
    """What the sender hands to the relay: envelope and the message bytes."""

    sender: str  # "" is the null reverse path <>
    recipients: tuple[str, ...]
    data: bytes
    smtputf8: bool = False


_HEADER_NAME_RE: Final = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 2.2 ftext
# Headers built from the structured fields; "headers" may not set them a second time.
_RESERVED: Final = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "content-type",
        "content-transfer-encoding",
        "mime-version",
    }
)
_KNOWN_KEYS: Final = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "return_path",
        "subject",
        "text",
        "html",
        "attachments",
        "headers",
        "message",
        "reply_channel",
    }
)


def _no_line_breaks(value: str, path: str) -> str:
    if "\r" in value or "\n" in value:
        raise InvalidEmail(path, "contains a line break (CR or LF); header injection refused")
    if "\0" in value:
        raise InvalidEmail(path, "contains a NUL character")
    return value


def _text(message: Mapping[str, Any], key: str, *, header: bool) -> str | None:
    value = message.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEmail(f"message[{key!r}]", f"must be a str, not {type(value).__name__}")
    return _no_line_breaks(value, f"message[{key!r}]") if header else value


def _address(value: object, path: str) -> tuple[str, str]:
    """``(header form, bare address)`` of ``"Name <user@host>"`` or ``"user@host"``."""
    if not isinstance(value, str):
        raise InvalidEmail(path, f"must be a str address, not {type(value).__name__}")
    _no_line_breaks(value, path)
    found = email.utils.getaddresses([value])
    address = found[0][1] if len(found) == 1 else ""
    if not address or "@" not in address or any(c in address for c in "<>, "):
        raise InvalidEmail(path, f"{value!r} is not an address such as user@example.com")
    return value, address


def _addresses(message: Mapping[str, Any], key: str) -> list[tuple[str, str]]:
    value = message.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise InvalidEmail(f"message[{key!r}]", "must be an address or a list of addresses")
    return [_address(item, f"message[{key!r}][{index}]") for index, item in enumerate(value)]


def build_outgoing(message: Mapping[str, Any]) -> OutgoingEmail:
    """Turn an ``email.send`` message into envelope + bytes, or raise :class:`InvalidEmail`.

    Keys: ``from``, ``to`` (address or list), optional ``cc``/``bcc``; then either
    ``message`` (raw RFC 5322 bytes, sent as they are) or ``subject`` + ``text``
    (+ ``html``, ``attachments`` as ``{"filename", "content_type", "content"}``,
    ``headers`` for extra ones such as In-Reply-To). ``return_path`` overrides the
    envelope sender; ``None`` there means the null sender ``<>`` (auto-replies, RFC 3834).
    """
    unknown = sorted(set(message) - _KNOWN_KEYS)
    if unknown:
        raise InvalidEmail(f"message[{unknown[0]!r}]", "is not an email.send key")
    sender_header, sender = _address(message.get("from"), "message['from']")
    to = _addresses(message, "to")
    cc = _addresses(message, "cc")
    bcc = _addresses(message, "bcc")
    if not (to or cc or bcc):
        raise InvalidEmail("message['to']", "needs at least one recipient")
    recipients = tuple(address for _, address in to + cc + bcc)
    envelope_sender = sender
    if "return_path" in message:
        path = message["return_path"]
        envelope_sender = "" if path is None else _address(path, "message['return_path']")[1]

    raw = message.get("message")
    if raw is not None:
        if not isinstance(raw, bytes):
            raise InvalidEmail("message['message']", "raw message must be bytes")
        clash = sorted({"subject", "text", "html", "attachments", "headers"} & set(message))
        if clash:
            raise InvalidEmail(f"message[{clash[0]!r}]", "cannot be combined with a raw 'message'")
        smtputf8 = not (envelope_sender.isascii() and all(r.isascii() for r in recipients))
        return OutgoingEmail(
            sender=envelope_sender, recipients=recipients, data=raw, smtputf8=smtputf8
        )

    subject = _text(message, "subject", header=True)
    text = _text(message, "text", header=False)
    html = _text(message, "html", header=False)
    if subject is None:
        raise InvalidEmail("message['subject']", "is required without a raw 'message'")
    if text is None and html is None:
        raise InvalidEmail("message['text']", "give 'text' and/or 'html' (or a raw 'message')")

    mail = EmailMessage(policy=email.policy.SMTP)
    try:
        mail["From"] = sender_header
        if to:
            mail["To"] = ", ".join(header for header, _ in to)
        if cc:
            mail["Cc"] = ", ".join(header for header, _ in cc)
        mail["Subject"] = subject
    except (ValueError, TypeError, IndexError) as exc:
        raise InvalidEmail("message", f"cannot build the headers: {exc}") from exc
    mail["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    mail["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2] or None)
    extra = message.get("headers") or {}
    if not isinstance(extra, dict):
        raise InvalidEmail("message['headers']", "must be a dict of name -> str")
    for name, value in extra.items():
        path = f"message['headers'][{name!r}]"
        if not isinstance(name, str) or not _HEADER_NAME_RE.fullmatch(name):
            raise InvalidEmail(path, "is not a header name (printable ASCII without ':')")
        if name.lower() in _RESERVED:
            raise InvalidEmail(path, "is set from its own email.send key")
        if not isinstance(value, str):
            raise InvalidEmail(path, f"must be a str, not {type(value).__name__}")
        _no_line_breaks(value, path)
        try:
            if name.lower() in ("date", "message-id"):
                del mail[name]
            mail[name] = value
        except (ValueError, TypeError, IndexError) as exc:
            raise InvalidEmail(path, f"is not a valid header value: {exc}") from exc

    smtputf8 = not (envelope_sender.isascii() and all(r.isascii() for r in recipients))
    # Without SMTPUTF8, keep the body 7-bit: a relay without 8BITMIME must accept it too.
    cte = None if smtputf8 else "quoted-printable"
    if text is not None:
        mail.set_content(text, cte=cte if not text.isascii() else None)
        if html is not None:
            mail.add_alternative(html, subtype="html", cte=cte if not html.isascii() else None)
    else:
        assert html is not None
        mail.set_content(html, subtype="html", cte=cte if not html.isascii() else None)
    attachments = message.get("attachments") or []
    if not isinstance(attachments, list | tuple):
        raise InvalidEmail("message['attachments']", "must be a list")
    for index, item in enumerate(attachments):
        path = f"message['attachments'][{index}]"
        if not isinstance(item, dict):
            raise InvalidEmail(path, "must be a dict with filename, content_type, content")
        filename = item.get("filename")
        ctype = item.get("content_type", "application/octet-stream")
        data = item.get("content")
        if not isinstance(filename, str) or not filename:
            raise InvalidEmail(f"{path}['filename']", "must be a non-empty str")
        _no_line_breaks(filename, f"{path}['filename']")
        if not isinstance(ctype, str) or not re.fullmatch(r"[\w.+-]+/[\w.+-]+", ctype):
            raise InvalidEmail(f"{path}['content_type']", "must look like type/subtype")
        if not isinstance(data, bytes):
            raise InvalidEmail(f"{path}['content']", "must be bytes")
        maintype, _, subtype = ctype.partition("/")
        mail.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)

    try:
        data = mail.as_bytes(policy=email.policy.SMTPUTF8 if smtputf8 else email.policy.SMTP)
    except (ValueError, TypeError, IndexError) as exc:
        raise InvalidEmail("message", f"cannot serialize the mail: {exc}") from exc
    return OutgoingEmail(
        sender=envelope_sender, recipients=recipients, data=data, smtputf8=smtputf8
    )
