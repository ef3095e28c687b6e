"""Channel layers, chosen by URL: ``memory://``, ``redis://`` and third-party ones.

A layer class is found by URL scheme: first among csp-bus's own layers, then in the
entry-point group ``csp_bus.layers`` (name = scheme, value = ``module:Class``), loaded
lazily so that ``import csp_bus`` imports no backend.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import entry_points
from urllib.parse import urlsplit

import trio

from ..errors import InvalidLayerURL
from .base import ChannelLayer
from .options import COMMON_PARAMETERS

__all__ = ["ChannelLayer", "find_open_layer", "layer_class", "normalize_url", "open_layer"]

_BUILTIN: dict[str, str] = {
    "memory": "csp_bus.layers.memory:MemoryLayer",
    "redis": "csp_bus.layers.redis:RedisLayer",
    "rediss": "csp_bus.layers.redis:RedisLayer",
    "unix": "csp_bus.layers.redis:RedisLayer",
    "redis+sentinel": "csp_bus.layers.redis:RedisLayer",
}


def _known_schemes() -> dict[str, str]:
    schemes = dict(_BUILTIN)
    for entry in entry_points(group="csp_bus.layers"):
        schemes.setdefault(entry.name, entry.value)
    return schemes


def layer_class(url: str) -> type[ChannelLayer]:
    """The class serving ``url``'s scheme; ``InvalidLayerURL`` lists the known schemes."""
    if not isinstance(url, str) or "://" not in url:
        raise InvalidLayerURL(
            f"layer URL {url!r} must look like SCHEME://..., e.g. memory:// or "
            "redis://localhost:6379/0"
        )
    scheme = url.split("://", 1)[0].lower()
    schemes = _known_schemes()
    target = schemes.get(scheme)
    if target is None:
        raise InvalidLayerURL(
            f"unknown layer scheme {scheme!r} in {url!r}; accepted schemes: "
            + ", ".join(f"{name}://" for name in sorted(schemes))
        )
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidLayerURL(
            f"the {scheme}:// layer cannot be loaded ({exc}); for redis:// install the "
            "extra: pip install 'csp-bus[redis]'"
        ) from exc
    cls = getattr(module, attribute, None)
    if not (isinstance(cls, type) and issubclass(cls, ChannelLayer)):
        raise InvalidLayerURL(f"{target} (for {scheme}://) is not a ChannelLayer")
    return cls


def normalize_url(url: str) -> str:
    """Which bus a URL names, for finding an open layer: ``memory://`` and
    ``memory:///?capacity=5`` name the same one. Options that only shape how a layer
    treats messages (capacity, expiry...) are left out; others (a Redis ``prefix``)
    stay, since they select different channels."""
    parts = urlsplit(url)
    query = "&".join(
        sorted(
            item
            for item in parts.query.split("&")
            if item and item.split("=", 1)[0] not in COMMON_PARAMETERS
        )
    )
    return f"{parts.scheme.lower()}://{parts.netloc}{parts.path.rstrip('/')}?{query}"


# Layers open in this process, by normalized URL, with the Trio token of the run that
# owns them: csp_bus.sync.connect(url) called from a worker thread of that run reaches
# the same instance instead of building a copy. The newest open layer wins.
_open: dict[str, list[tuple[ChannelLayer, trio.lowlevel.TrioToken]]] = {}
_open_lock = threading.Lock()


def find_open_layer(url: str) -> tuple[ChannelLayer, trio.lowlevel.TrioToken] | None:
    """The newest layer opened in this process with ``open_layer(url)``, if any."""
    with _open_lock:
        entries = _open.get(normalize_url(url))
        return entries[-1] if entries else None


@asynccontextmanager
async def open_layer(url: str) -> AsyncIterator[ChannelLayer]:
    """``async with open_layer("memory://?capacity=50") as layer:`` -- open, yield, close.

    Raises ``InvalidLayerURL`` for an unknown scheme or a bad parameter, listing what is
    accepted. While open, :func:`csp_bus.sync.connect` with the same URL, called from a
    thread of this Trio program, reaches this very instance.
    """
    layer = layer_class(url).from_url(url)
    key = normalize_url(url)
    entry = (layer, trio.lowlevel.current_trio_token())
    async with layer:
        with _open_lock:
            _open.setdefault(key, []).append(entry)
        try:
            yield layer
        finally:
            with _open_lock:
                entries = _open.get(key, [])
                if entry in entries:
                    entries.remove(entry)
                if not entries:
                    _open.pop(key, None)
