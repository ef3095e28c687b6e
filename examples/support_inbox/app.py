"""Support inbox: mail to support@ shows up in a browser chat room and gets an auto-reply.

    cd examples/support_inbox
    python -m aiosmtpd -n -c aiosmtpd.handlers.Debugging -l 127.0.0.1:1025 &  # a relay
    csp-bus serve --adapter http --adapter websocket --adapter email --app app:routes \\
        --bind 127.0.0.1:8000 \\
        --smtp-bind 127.0.0.1:2525 --smtp-domains example.com \\
        --smtp-relay 127.0.0.1:1025

Open http://127.0.0.1:8000/ and send a mail (``python send_mail.py``): it appears in the
room, and the relay prints the auto-reply. See README.md.

Everything here is plain synchronous code running in worker threads: the email adapter
put the mail on ``email.receive``; this consumer posts it to the room's group and puts
the auto-reply on ``email.send``, which the adapter's sender delivers.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from csp_bus.consumers import Channel, Group, Message
from csp_bus.routing import route

logger = logging.getLogger("support_inbox")

ROOM = "support"  # the chat room agents watch: group "chat-support"
MAILBOX = "support"  # the local part this inbox answers for
EXCERPT = 2000  # characters of the body shown in the room
PAGE = (Path(__file__).with_name("room.html")).read_bytes()


# --------------------------------------------------------------------------- mail


def plain_text(content: dict[str, Any]) -> str:
    """The first text/plain body of a content object (``email.receive["content"]``)."""
    content_type = content.get("content-type", "text/plain")
    if "parts" in content:
        for part in content["parts"]:
            text = plain_text(part)
            if text:
                return text
        return ""
    if not content_type.lower().startswith("text/plain") or content.get("filename"):
        return ""
    found = re.search(r'charset="?([\w.:-]+)"?', content_type, re.IGNORECASE)
    charset = found.group(1) if found else "utf-8"
    try:
        return content["body"].decode(charset, "replace")
    except LookupError:  # an unknown charset name
        return content["body"].decode("utf-8", "replace")


def should_auto_reply(mail: dict[str, Any]) -> bool:
    """RFC 3834 section 2: never answer bounces, other robots or mailing lists."""
    headers = mail["headers"]
    if mail["from"] is None:  # the null sender <>: a bounce
        return False
    if headers.get("auto-submitted", "no").strip().lower() != "no":
        return False
    if headers.get("precedence", "").strip().lower() in ("bulk", "list", "junk"):
        return False
    if "list-id" in headers or "list-unsubscribe" in headers:
        return False
    return not mail["from"].lower().startswith(f"{MAILBOX}@")  # never answer ourselves


def support_address(mail: dict[str, Any]) -> str | None:
    for address in mail["to"]:
        if address.lower().startswith(f"{MAILBOX}@"):
            return address
    return None


def on_mail(message: Message) -> None:
    """``email.receive``: post to the room, then auto-reply."""
    mail = message.content
    ours = support_address(mail)
    if ours is None:
        logger.info("mail for %s is not for the support inbox; ignored", mail["to"])
        return
    headers = mail["headers"]
    subject = headers.get("subject", "(no subject)")
    sender = mail["from"] or "mailer-daemon"
    body = plain_text(mail["content"]).strip()
    if len(body) > EXCERPT:
        body = body[:EXCERPT] + " [...]"
    Group(f"chat-{ROOM}").send(
        {"text": json.dumps({"user": f"mail from {sender}", "text": f"{subject}\n\n{body}"})}
    )
    if not should_auto_reply(mail):
        return
    reply_headers = {"Auto-Submitted": "auto-replied"}  # RFC 3834 section 5
    if "message-id" in headers:
        reply_headers["In-Reply-To"] = headers["message-id"]
        reply_headers["References"] = headers["message-id"]
    Channel("email.send").send(
        {
            "from": f"Support <{ours}>",
            "to": sender,
            "subject": subject if subject.lower().startswith("re:") else f"Re: {subject}",
            "text": (
                "Hello,\n\nthank you for writing to us. Your message reached our support "
                "team, who will answer you shortly.\n\n-- The support team\n"
            ),
            "headers": reply_headers,
            # The null return path: a bounce of the auto-reply must not be answered again.
            "return_path": None,
        }
    )


# --------------------------------------------------------------------- the room


def page(message: Message) -> None:
    """``GET /``: the chat room page."""
    message.reply_channel.send(
        {
            "status": 200,
            "headers": [[b"content-type", b"text/html; charset=utf-8"]],
            "content": PAGE,
        }
    )


def room_connect(message: Message, room: str) -> None:
    Group(f"chat-{room}").add(message.reply_channel)
    message.reply_channel.send({"accept": True})


def room_receive(message: Message, room: str) -> None:
    text = (message.get("text") or "").strip()[:1000]
    if text:
        Group(f"chat-{room}").send({"text": json.dumps({"user": "agent", "text": text})})


def room_disconnect(message: Message, room: str) -> None:
    Group(f"chat-{room}").discard(message.reply_channel)


ROOM_PATH = r"^/chat/(?P<room>\w+)/$"

routes = [
    route("email.receive", on_mail),
    route("http.request", page, path=r"^/$"),
    route("websocket.connect", room_connect, path=ROOM_PATH),
    route("websocket.receive", room_receive, path=ROOM_PATH),
    route("websocket.disconnect", room_disconnect, path=ROOM_PATH),
]
