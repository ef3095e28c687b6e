"""Trusted-proxy handling of ``X-Forwarded-For`` and ``X-Forwarded-Proto``.

Behind a reverse proxy the TCP peer is the proxy; the real client and scheme come from
headers the proxy adds. Those headers are believed only when the TCP peer is a trusted
proxy (``--forwarded-allow-ips``), otherwise any client could claim any address.

``X-Forwarded-For`` is a list that each proxy appends to: ``client, proxy1, proxy2``.
The client is found by walking from the right and skipping trusted proxies: the first
untrusted address is the client (the leftmost entries could be forged by the client).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["TrustedProxies"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_SCHEMES = frozenset({"http", "https", "ws", "wss"})


@dataclass(frozen=True)
class TrustedProxies:
    """Which peers may set forwarding headers: ``*`` (all), addresses, CIDR networks,
    and ``unix`` for peers on a Unix socket."""

    any: bool
    networks: tuple[_Network, ...]
    unix: bool

    @classmethod
    def parse(cls, items: Iterable[str]) -> TrustedProxies:
        any_peer = False
        unix = False
        networks: list[_Network] = []
        for raw in items:
            for item in filter(None, (part.strip() for part in raw.split(","))):
                if item == "*":
                    any_peer = True
                elif item.lower() == "unix":
                    unix = True
                else:
                    try:
                        networks.append(ipaddress.ip_network(item, strict=False))
                    except ValueError:
                        raise UsageError(
                            f"--forwarded-allow-ips: {item!r} is not an IP address or network "
                            "(use e.g. 127.0.0.1, 10.0.0.0/8, ::1, unix or *)"
                        ) from None
        return cls(any_peer, tuple(networks), unix)

    def trusts(self, host: str | None) -> bool:
        """Is the peer ``host`` (``None`` for a Unix-socket peer) a trusted proxy?"""
        if self.any:
            return True
        if host is None:
            return self.unix
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def resolve(
        self,
        client: tuple[str, int] | None,
        scheme: str,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> tuple[tuple[str, int] | None, str]:
        """The ``(client, scheme)`` after applying forwarding headers from a trusted peer.

        ``headers`` are lower-cased ``(name, value)`` pairs. Malformed header values are
        ignored (the TCP peer stays the client), never an error.
        """
        if not self.trusts(client[0] if client else None):
            return client, scheme
        forwarded_for: list[str] = []
        proto: str | None = None
        for name, value in headers:
            if name == b"x-forwarded-for":
                text = value.decode("latin-1")
                forwarded_for.extend(p.strip() for p in text.split(",") if p.strip())
            elif name == b"x-forwarded-proto":
                parts = [p.strip().lower() for p in value.decode("latin-1").split(",")]
                if parts and parts[-1] in _SCHEMES:
                    proto = parts[-1]
        if proto is not None:
            # A WebSocket request forwarded as https keeps its own family (wss).
            if scheme in ("ws", "wss"):
                proto = "wss" if proto in ("https", "wss") else "ws"
            scheme = proto
        if forwarded_for:
            chosen = forwarded_for[0]
            for candidate in reversed(forwarded_for):
                if not self.trusts(candidate):
                    chosen = candidate
                    break
            try:
                ipaddress.ip_address(chosen.split("%", 1)[0])
            except ValueError:
                return client, scheme
            client = (chosen, 0)
        return client, scheme
