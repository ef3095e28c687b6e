"""The email adapter: SMTP in (``email.receive``), SMTP out (``email.send``).

* :mod:`.protocol` -- the sans-IO SMTP server state machine (RFC 5321 + extensions);
* :mod:`.messages` -- ``email.receive``/``email.send`` <-> RFC 5322 mail (stdlib ``email``);
* :mod:`.server` -- :func:`serve_smtp`, the Trio glue: 250 only once the mail is on the bus;
* :mod:`.sender` -- :func:`run_sender`, drains ``email.send`` through a relay with smtplib;
* :mod:`.adapter` -- ``csp-bus serve --adapter email`` (entry point ``email``).

See ``docs/email.md``.
"""

from __future__ import annotations

from .adapter import EmailAdapter, EmailConfig, adapter
from .messages import (
    RECEIVE_CHANNEL,
    SEND_CHANNEL,
    InvalidEmail,
    OutgoingEmail,
    build_outgoing,
    receive_message,
)
from .protocol import SessionConfig, SMTPServerConnection
from .sender import DeliveryReport, RelayConfig, deliver, run_sender
from .server import SMTPServerConfig, serve_smtp

__all__ = [
    "RECEIVE_CHANNEL",
    "SEND_CHANNEL",
    "DeliveryReport",
    "EmailAdapter",
    "EmailConfig",
    "InvalidEmail",
    "OutgoingEmail",
    "RelayConfig",
    "SMTPServerConfig",
    "SMTPServerConnection",
    "SessionConfig",
    "adapter",
    "build_outgoing",
    "deliver",
    "receive_message",
    "run_sender",
    "serve_smtp",
]
