"""Outbound mail: drain ``email.send`` and deliver through a relay (a smarthost).

The SMTP client is the standard library's ``smtplib``, run in a worker thread with
``trio.to_thread.run_sync`` (one thread per delivery in flight, ``concurrency`` at most):
the relay does the MX lookups, queueing and retries towards the world; we do the
retries towards the relay.

Per message: build it (:func:`.messages.build_outgoing`; an invalid one is reported and
never sent), then deliver. A temporary failure -- a ``4xx`` reply, a dropped connection,
a timeout, a refused connection -- is retried with exponential backoff (``backoff``
seconds doubling up to ``backoff_max``, ``max_attempts`` tries in all), for the
recipients that still need it. A permanent ``5xx`` is final for the recipients it names.
When the message has a ``reply_channel``, the delivery report goes there::

    {"status": "sent" | "partial" | "failed" | "invalid",
     "accepted": [addresses], "refused": {address: [code, text]},
     "attempts": n, "error": text or None}

At-most-once, like the bus: a message being retried when the server stops is logged
and dropped (its sender learns nothing more); see ``docs/email.md``.
"""

from __future__ import annotations

import logging
import math
import smtplib
import ssl
from dataclasses import dataclass, field

import trio

from csp_bus.errors import BusError, UsageError
from csp_bus.layers.base import ChannelLayer
from csp_bus.messages import Message, validate_send_name

from .messages import SEND_CHANNEL, InvalidEmail, OutgoingEmail, build_outgoing

__all__ = ["DeliveryReport", "RelayConfig", "deliver", "run_sender"]

logger = logging.getLogger("csp_bus.adapters.email")


@dataclass(frozen=True, kw_only=True)
class RelayConfig:
    """Where and how outgoing mail is delivered.

    ``starttls`` upgrades a plain connection (port 587/25); ``tls`` speaks TLS from the
    start (port 465). Certificates are verified against the system store or ``cafile``;
    ``password`` never comes from the command line (``--smtp-relay-password-file`` or the
    ``CSP_BUS_SMTP_RELAY_PASSWORD`` variable).
    """

    host: str
    port: int = 25
    starttls: bool = False
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: str | None = None
    local_hostname: str | None = None
    timeout: float = 30.0
    channel: str = SEND_CHANNEL
    concurrency: int = 4
    max_attempts: int = 5
    backoff: float = 1.0
    backoff_max: float = 300.0

    def __post_init__(self) -> None:
        validate_send_name(self.channel)
        if not self.host:
            raise UsageError("the relay host is empty (--smtp-relay HOST:PORT)")
        if not 0 < self.port < 65536:
            raise UsageError(f"relay port {self.port} is not 1..65535")
        if self.starttls and self.tls:
            raise UsageError("choose STARTTLS or implicit TLS for the relay, not both")
        if (self.username is None) != (self.password is None):
            raise UsageError("relay authentication needs both a user and a password")
        if self.username is not None and not (self.starttls or self.tls):
            raise UsageError(
                "refusing to send the relay password in clear text: add --smtp-relay-starttls"
            )
        if self.concurrency < 1 or self.max_attempts < 1:
            raise UsageError("concurrency and max_attempts must be at least 1")
        for name in ("timeout", "backoff", "backoff_max"):
            value = getattr(self, name)
            if math.isnan(value) or value < 0:
                raise UsageError(f"{name} must be 0 or more seconds")

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cafile)


@dataclass(frozen=True, kw_only=True)
class _Attempt:
    accepted: tuple[str, ...] = ()
    temporary: dict[str, tuple[int, str]] = field(default_factory=dict)
    permanent: dict[str, tuple[int, str]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class DeliveryReport:
    """The outcome of one ``email.send`` message (sent to its ``reply_channel``)."""

    status: str
    accepted: tuple[str, ...] = ()
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    attempts: int = 0
    error: str | None = None

    def as_message(self) -> Message:
        return {
            "status": self.status,
            "accepted": list(self.accepted),
            "refused": {k: [code, text] for k, (code, text) in self.refused.items()},
            "attempts": self.attempts,
            "error": self.error,
        }


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _all(recipients: list[str], code: int, text: str) -> _Attempt:
    outcome = {address: (code, text) for address in recipients}
    if code == 0 or 400 <= code < 500:
        return _Attempt(temporary=outcome)
    return _Attempt(permanent=outcome)


def _deliver_once(config: RelayConfig, mail: OutgoingEmail, recipients: list[str]) -> _Attempt:
    """One SMTP session with the relay (blocking: runs in a worker thread).

    Every failure becomes an :class:`_Attempt`; nothing raises. Codes 4xx and network
    errors are temporary (code 0 marks "no reply at all"), 5xx are permanent.
    """
    client: smtplib.SMTP | None = None
    try:
        if config.tls:
            client = smtplib.SMTP_SSL(
                config.host,
                config.port,
                local_hostname=config.local_hostname,
                timeout=config.timeout,
                context=config.ssl_context(),
            )
        else:
            client = smtplib.SMTP(
                config.host,
                config.port,
                local_hostname=config.local_hostname,
                timeout=config.timeout,
            )
        client.ehlo_or_helo_if_needed()
        if config.starttls:
            client.starttls(context=config.ssl_context())
            client.ehlo()
        if config.username is not None and config.password is not None:
            client.login(config.username, config.password)
        options = []
        if mail.smtputf8:
            options.append("SMTPUTF8")  # smtplib raises SMTPNotSupportedError if absent
        if not mail.data.isascii() and client.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        refused = client.sendmail(mail.sender, recipients, mail.data, mail_options=options)
        temporary = {a: (c, _text(t)) for a, (c, t) in refused.items() if 400 <= c < 500}
        permanent = {a: (c, _text(t)) for a, (c, t) in refused.items() if not 400 <= c < 500}
        accepted = tuple(a for a in recipients if a not in refused)
        return _Attempt(accepted=accepted, temporary=temporary, permanent=permanent)
    except smtplib.SMTPRecipientsRefused as exc:
        temporary = {a: (c, _text(t)) for a, (c, t) in exc.recipients.items() if 400 <= c < 500}
        permanent = {a: (c, _text(t)) for a, (c, t) in exc.recipients.items() if not 400 <= c < 500}
        return _Attempt(temporary=temporary, permanent=permanent)
    except smtplib.SMTPNotSupportedError as exc:
        return _all(recipients, 553, f"5.6.7 the relay cannot carry this mail: {exc}")
    except smtplib.SMTPResponseException as exc:  # sender refused, data error, auth, helo
        return _all(recipients, exc.smtp_code, _text(exc.smtp_error))
    except (smtplib.SMTPException, OSError) as exc:  # disconnects, timeouts, TLS, refused
        return _all(recipients, 0, f"{type(exc).__name__}: {exc}")
    finally:
        if client is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()


def _temporary(item: tuple[int, str]) -> bool:
    return item[0] == 0 or 400 <= item[0] < 500


async def deliver(
    config: RelayConfig,
    mail: OutgoingEmail,
    *,
    limiter: trio.CapacityLimiter | None = None,
) -> DeliveryReport:
    """Deliver ``mail`` through the relay, retrying temporary failures with backoff."""
    pending = list(dict.fromkeys(mail.recipients))
    accepted: list[str] = []
    refused: dict[str, tuple[int, str]] = {}
    attempts = 0
    while pending:
        attempts += 1
        result = await trio.to_thread.run_sync(
            _deliver_once, config, mail, pending, limiter=limiter
        )
        accepted.extend(result.accepted)
        refused.update(result.permanent)
        pending = [a for a in pending if a in result.temporary]
        if not pending:
            break
        if attempts >= config.max_attempts:
            for address in pending:
                code, text = result.temporary[address]
                refused[address] = (code, f"gave up after {attempts} attempts: {text}")
            break
        delay = min(config.backoff_max, config.backoff * 2 ** (attempts - 1))
        logger.info(
            "relay deferred %d recipient(s) (%s); retry %d in %.1f s",
            len(pending),
            result.temporary[pending[0]],
            attempts + 1,
            delay,
        )
        try:
            await trio.sleep(delay)
        except trio.Cancelled:
            logger.warning(
                "mail from <%s> to %s dropped at shutdown with retries pending",
                mail.sender,
                ", ".join(pending),
            )
            raise
    for address in accepted:
        refused.pop(address, None)
    status = "sent" if not refused else ("partial" if accepted else "failed")
    error = None
    if refused:
        code, text = next(iter(refused.values()))
        error = f"{code} {text}"
    return DeliveryReport(
        status=status,
        accepted=tuple(accepted),
        refused=refused,
        attempts=attempts,
        error=error,
    )


async def _report(layer: ChannelLayer, message: Message, report: DeliveryReport) -> None:
    reply_channel = message.get("reply_channel")
    if not isinstance(reply_channel, str):
        return
    try:
        await layer.send(reply_channel, report.as_message())
    except BusError as exc:
        logger.warning("delivery report to %r not sent: %s", reply_channel, exc)


async def _handle(
    layer: ChannelLayer, config: RelayConfig, message: Message, limiter: trio.CapacityLimiter
) -> None:
    try:
        mail = build_outgoing(message)
    except InvalidEmail as exc:
        logger.warning("email.send message refused: %s", exc)
        await _report(layer, message, DeliveryReport(status="invalid", error=str(exc)))
        return
    report = await deliver(config, mail, limiter=limiter)
    if report.status != "sent":
        logger.warning(
            "mail from <%s> %s: %s", mail.sender, report.status, report.error or "no detail"
        )
    await _report(layer, message, report)


async def run_sender(
    layer: ChannelLayer,
    config: RelayConfig,
    *,
    stopping: trio.Event | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Drain ``config.channel`` (``email.send``) until cancelled or ``stopping`` is set.

    ``concurrency`` messages are delivered at once. On ``stopping``: no new message is
    taken; deliveries in flight finish (their retries included).
    """
    limiter = trio.CapacityLimiter(config.concurrency)
    receivers: list[trio.CancelScope] = []

    async def worker(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        while True:
            with trio.CancelScope() as scope:
                receivers.append(scope)
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                if stopping is not None and stopping.is_set():
                    return
                try:
                    _, message = await layer.receive(config.channel)
                finally:
                    receivers.remove(scope)
            if scope.cancelled_caught:
                return
            try:
                await _handle(layer, config, message, limiter)
            except Exception:
                logger.exception("email.send message failed unexpectedly")

    async with trio.open_nursery() as nursery:
        for _ in range(config.concurrency):
            await nursery.start(worker)
        task_status.started()
        if stopping is not None:
            await stopping.wait()
            for scope in list(receivers):
                scope.cancel()
