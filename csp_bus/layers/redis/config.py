"""``redis://`` URLs parsed once into a frozen :class:`RedisConfig`, and shard hashing.

Accepted forms (``docs/redis.md`` has the full table)::

    redis://[[user]:password@]host[:port][,host2[:port]...][/db][?param=value...]
    rediss://...                      same, over TLS
    unix://[[user]:password@]/path/to/redis.sock[?db=N&...]
    redis+sentinel://[[user]:password@]s1[:26379][,s2...]/service[/db][?...]
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from ...errors import InvalidLayerURL
from ..options import LayerOptions
from .client import ConnectOptions, Endpoint

__all__ = ["URL_PARAMETERS", "RedisConfig", "parse_url", "rendezvous"]

URL_PARAMETERS: dict[str, str] = {
    "prefix": "prefix of every Redis key this layer uses (default csp-bus); letters, digits, "
    "'-', '_', '.'",
    "db": "database number (also the URL path: redis://host/2)",
    "connect_timeout": "seconds to connect and authenticate (default 2)",
    "timeout": "seconds a command may wait for its reply (default 5)",
    "max_connections": "dedicated connections per server for blocking receives (default 100)",
    "ssl_cert_reqs": "rediss:// certificate check: required (default) or none",
    "ssl_ca_certs": "rediss:// CA bundle file to verify the server with",
    "sentinel_password": "password of the Sentinels (redis+sentinel://)",
}

_PREFIX = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "redis+sentinel": 26379}


@dataclass(frozen=True, kw_only=True)
class RedisConfig:
    """Everything the URL says, validated."""

    scheme: str
    #: servers (for sentinel: the Sentinels), in URL order
    endpoints: tuple[Endpoint, ...]
    connect: ConnectOptions
    layer: LayerOptions = field(default_factory=LayerOptions)
    prefix: str = "csp-bus"
    max_connections: int = 100
    #: redis+sentinel:// only
    service: str | None = None
    sentinel: ConnectOptions | None = None


def _int(name: str, text: str, low: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidLayerURL(f"parameter {name}={text!r} must be an integer") from None
    if value < low:
        raise InvalidLayerURL(f"parameter {name}={text!r} must be at least {low}")
    return value


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidLayerURL(f"parameter {name}={text!r} must be a number of seconds") from None
    if not 0 < value < float("inf"):
        raise InvalidLayerURL(f"parameter {name}={text!r} must be positive and finite")
    return value


def _endpoints(hosts: str, default_port: int, url: str) -> tuple[Endpoint, ...]:
    result = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            raise InvalidLayerURL(f"empty host in {url!r}")
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise InvalidLayerURL(f"bad IPv6 host {item!r} in {url!r}")
            port_text = rest[1:]
        else:
            host, _, port_text = item.partition(":")
        port = default_port
        if port_text:
            port = _int("port", port_text, 1)
            if port > 65535:
                raise InvalidLayerURL(f"port {port} out of range in {url!r}")
        result.append(Endpoint(host=host, port=port))
    return tuple(result)


def parse_url(url: str) -> RedisConfig:
    """Parse a layer URL; :class:`InvalidLayerURL` says what is wrong and what is accepted."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in {"redis", "rediss", "unix", "redis+sentinel"}:
        raise InvalidLayerURL(
            f"{url!r} is not a Redis layer URL (redis://, rediss://, unix://, redis+sentinel://)"
        )
    parts = urlsplit("x://" + rest)
    if parts.fragment:
        raise InvalidLayerURL(f"a layer URL has no #fragment: {url!r}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    layer_options, own = LayerOptions.from_query(query, layer=f"{scheme}://", extra=URL_PARAMETERS)
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if colon else None
        if not colon:  # redis://secret@host is a password, as redis-cli reads it
            username, password = None, unquote(user_text)

    path = unquote(parts.path)
    db = 0
    service = None
    if scheme == "unix":
        if hosts:
            raise InvalidLayerURL(f"a unix:// URL names a socket path, not a host: {url!r}")
        if not path or path == "/":
            raise InvalidLayerURL("a unix:// URL needs the socket path: unix:///run/redis.sock")
        endpoints: tuple[Endpoint, ...] = (Endpoint(path=path),)
    else:
        if not hosts:
            raise InvalidLayerURL(f"no host in {url!r}; e.g. redis://127.0.0.1:6379/0")
        endpoints = _endpoints(hosts, _DEFAULT_PORTS[scheme], url)
        segments = [segment for segment in path.split("/") if segment]
        if scheme == "redis+sentinel":
            if not segments:
                raise InvalidLayerURL(
                    f"a redis+sentinel:// URL names the master: "
                    f"redis+sentinel://host:26379/mymaster/0 (got {url!r})"
                )
            service, segments = segments[0], segments[1:]
        if len(segments) > 1:
            raise InvalidLayerURL(f"the URL path is the database number only: {url!r}")
        if segments:
            db = _int("database number", segments[0])
    if "db" in own:
        db = _int("db", own["db"])

    prefix = own.get("prefix", "csp-bus")
    if not _PREFIX.fullmatch(prefix):
        raise InvalidLayerURL(f"prefix={prefix!r} must be 1-64 letters, digits, '-', '_' or '.'")
    tls = None
    if scheme == "rediss":
        tls = ssl.create_default_context(cafile=own.get("ssl_ca_certs"))
        reqs = own.get("ssl_cert_reqs", "required").lower()
        if reqs == "none":
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        elif reqs != "required":
            raise InvalidLayerURL(f"ssl_cert_reqs={reqs!r} must be 'required' or 'none'")
    elif "ssl_ca_certs" in own or "ssl_cert_reqs" in own:
        raise InvalidLayerURL("ssl_* parameters need a rediss:// URL")
    connect_timeout = _seconds("connect_timeout", own.get("connect_timeout", "2"))
    timeout = _seconds("timeout", own.get("timeout", "5"))
    connect = ConnectOptions(
        username=username,
        password=password,
        db=db,
        tls=tls,
        connect_timeout=connect_timeout,
        timeout=timeout,
        require_master=scheme == "redis+sentinel",
    )
    sentinel = None
    if scheme == "redis+sentinel":
        sentinel = ConnectOptions(
            password=own.get("sentinel_password"),
            connect_timeout=connect_timeout,
            timeout=timeout,
        )
    elif "sentinel_password" in own:
        raise InvalidLayerURL("sentinel_password needs a redis+sentinel:// URL")
    return RedisConfig(
        scheme=scheme,
        endpoints=endpoints,
        connect=connect,
        layer=layer_options,
        prefix=prefix,
        max_connections=_int("max_connections", own.get("max_connections", "100"), 1),
        service=service,
        sentinel=sentinel,
    )


def rendezvous(key: str, nodes: Sequence[str]) -> int:
    """Index of the node owning ``key``: highest random weight (rendezvous) hashing.

    weight(node) = first 8 bytes, big-endian, of BLAKE2b-64 of ``node + "/" + key``;
    the highest weight wins, the first such node on a tie. Adding or removing one node
    moves only the keys that node gains or owned (``docs/redis-protocol.md``).
    """
    best = 0
    best_weight = -1
    for index, node in enumerate(nodes):
        digest = hashlib.blake2b(f"{node}/{key}".encode(), digest_size=8).digest()
        weight = int.from_bytes(digest, "big")
        if weight > best_weight:
            best, best_weight = index, weight
    return best
