"""The server's frozen configuration, built once at the edge (CLI or a test)."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["DEFAULT_PORT", "ServerConfig", "parse_bind"]

DEFAULT_PORT = 8000


def parse_bind(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8000"``, ``"[::1]:8000"``, ``"localhost:0"``, ``":8000"`` (all
    interfaces) or a bare ``"8000"`` -> ``(host, port)``; ``UsageError`` otherwise."""
    value = text.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise UsageError(f"--bind {text!r}: an IPv6 address looks like [::1]:8000")
        port_text = rest[1:] if rest else str(DEFAULT_PORT)
    elif value.count(":") > 1:
        raise UsageError(f"--bind {text!r}: put an IPv6 address in brackets, e.g. [::1]:8000")
    elif ":" in value:
        host, _, port_text = value.partition(":")
    elif value.isdigit():
        host, port_text = "", value
    else:
        host, port_text = value, str(DEFAULT_PORT)
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"--bind {text!r}: the port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"--bind {text!r}: the port must be 0..65535")
    return host, port


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """What the runtime needs; adapters get it too (``Adapter.configure``).

    ``binds`` empty together with ``unix`` and ``fds`` means: no listeners (an adapter
    that only connects out). Times are seconds; ``math.inf`` disables a timeout.
    """

    binds: tuple[tuple[str, int], ...] = (("127.0.0.1", DEFAULT_PORT),)
    unix: tuple[str, ...] = ()
    fds: tuple[int, ...] = ()
    certfile: str | None = None
    keyfile: str | None = None
    backlog: int = 2048
    max_connections: int = 10_000
    graceful_timeout: float = 30.0
    access_log: bool = True
    proxy_headers: bool = False
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    root_path: str = ""
    #: messages buffered per connection between the reply dispatcher and the connection
    reply_buffer: int = 16
    #: how long the dispatcher waits for a connection whose buffer is full before it
    #: aborts that connection (head-of-line blocking is bounded by this)
    reply_overrun_timeout: float = 2.0

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise UsageError("--max-connections must be at least 1")
        if self.backlog < 1:
            raise UsageError("--backlog must be at least 1")
        if not self.graceful_timeout >= 0:
            raise UsageError("--graceful-timeout must be 0 or more seconds")
        if self.reply_buffer < 1:
            raise UsageError("the reply buffer must hold at least one message")
        if (self.certfile is None) != (self.keyfile is None) and self.certfile is None:
            raise UsageError("--keyfile needs --certfile")
        if self.root_path and (not self.root_path.startswith("/") or self.root_path == "/"):
            raise UsageError("--root-path must start with '/' (and not be just '/'), e.g. /api")
        if math.isnan(self.reply_overrun_timeout) or self.reply_overrun_timeout < 0:
            raise UsageError("the reply overrun timeout must be 0 or more seconds")

    @property
    def tls(self) -> bool:
        """True when listeners speak TLS (``--certfile``)."""
        return self.certfile is not None

    @property
    def has_listeners(self) -> bool:
        return bool(self.binds or self.unix or self.fds)


def parse_seconds(text: str) -> float:
    """A command-line duration in seconds; ``off``/``none``/``inf``/``0`` mean no limit
    (``math.inf``). For adapters' ``add_arguments`` (``type=parse_seconds``)."""
    if text.strip().lower() in ("off", "none", "inf", "0"):
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("seconds must be positive (or 'off')")
    return value


def parse_size(text: str, *, allow_zero: bool = True) -> int:
    """A command-line size in bytes: ``65536``, ``64k``, ``10M``, ``1GiB``. With
    ``allow_zero`` (the default) 0 is accepted, meaning "no limit" where the option says so."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = units.get(value[-1:], 1)
    if value[-1:] in units:
        value = value[:-1]
    try:
        number = int(float(value) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 65536, 64k, 10M)") from None
    if number < 0 or (number == 0 and not allow_zero):
        raise argparse.ArgumentTypeError("a size must be positive")
    return number


def parse_positive_size(text: str) -> int:
    """:func:`parse_size` without 0."""
    return parse_size(text, allow_zero=False)
