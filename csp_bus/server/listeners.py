"""Listening sockets: TCP (IPv4/IPv6), Unix, inherited descriptors, TLS.

Sockets are made with the standard library *before* Trio starts, so that ``--workers N``
can fork N processes sharing them; each process wraps them in Trio listeners.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import stat
from dataclasses import dataclass

import trio

from ..errors import UsageError
from .config import ServerConfig

__all__ = ["BoundSocket", "make_sockets", "make_ssl_context", "to_listeners"]


@dataclass(frozen=True, eq=False)
class BoundSocket:
    """A listening stdlib socket and how to describe it (``url`` for humans)."""

    sock: socket.socket
    kind: str  # "tcp" | "unix" | "fd"
    address: tuple[str, int] | str

    def url(self, tls: bool) -> str:
        scheme = "https" if tls else "http"
        if isinstance(self.address, str):
            return f"{scheme}+unix://{self.address}"
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{port}"


def _tcp_sockets(host: str, port: int, backlog: int) -> list[BoundSocket]:
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise UsageError(f"--bind {host}:{port}: cannot resolve {host!r} ({exc})") from exc
    seen: set[tuple[int, tuple[object, ...]]] = set()
    made: list[BoundSocket] = []
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            made.append(BoundSocket(sock, "tcp", ("", 0)))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            bound = sock.getsockname()
            made[-1] = BoundSocket(sock, "tcp", (bound[0], bound[1]))
            if port == 0:
                break  # one ephemeral port for one listener; several would differ
    except OSError as exc:
        for item in made:
            item.sock.close()
        raise UsageError(f"cannot listen on {host or '*'}:{port}: {exc.strerror or exc}") from exc
    return made


def _unix_socket(path: str, backlog: int) -> BoundSocket:
    # A stale socket file from a crashed run would make bind fail; remove only sockets.
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on Unix socket {path}: {exc.strerror or exc}") from exc
    return BoundSocket(sock, "unix", path)


def _fd_socket(fd: int) -> BoundSocket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise UsageError(f"--fd {fd}: not a socket ({exc.strerror or exc})") from exc
    if sock.type != socket.SOCK_STREAM:
        raise UsageError(f"--fd {fd}: not a stream socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.listen(2048)
    name = sock.getsockname()
    address: tuple[str, int] | str = (
        (name[0], name[1]) if isinstance(name, tuple) else f"fd{fd}:{name!s}"
    )
    return BoundSocket(sock, "fd", address)


def make_sockets(config: ServerConfig) -> list[BoundSocket]:
    """Bind and listen on everything ``config`` names; ``UsageError`` on failure."""
    made: list[BoundSocket] = []
    try:
        for host, port in config.binds:
            made.extend(_tcp_sockets(host, port, config.backlog))
        for path in config.unix:
            made.append(_unix_socket(path, config.backlog))
        for fd in config.fds:
            made.append(_fd_socket(fd))
    except BaseException:
        for item in made:
            item.sock.close()
        raise
    return made


def make_ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The server TLS context for ``--certfile/--keyfile``, or ``None``."""
    if config.certfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the TLS certificate {config.certfile}: {exc}") from exc
    context.set_alpn_protocols(["http/1.1"])
    return context


def to_listeners(
    sockets: list[BoundSocket], ssl_context: ssl.SSLContext | None
) -> list[trio.abc.Listener[trio.abc.Stream]]:
    """Trio listeners over already-listening sockets (call inside ``trio.run``)."""
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
    for item in sockets:
        sock = item.sock
        sock.setblocking(False)
        listener: trio.abc.Listener[trio.abc.Stream] = trio.SocketListener(
            trio.socket.from_stdlib_socket(sock)
        )
        if ssl_context is not None:
            listener = trio.SSLListener(listener, ssl_context, https_compatible=True)  # type: ignore[arg-type]
        listeners.append(listener)
    return listeners
