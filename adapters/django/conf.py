"""The ``CSP_BUS`` setting, read once into a frozen :class:`BusSettings`.

::

    CSP_BUS = {
        "LAYER": "redis://127.0.0.1:6379/0",      # default: env CSP_BUS_LAYER, else memory://
        "ROUTING": "myproject.routing.routes",    # default: None (Django views only)
        "WORKER_THREADS": 8,                      # default: 8
        "RESPONSE_CHUNK_SIZE": 256 * 1024,        # default: 256 KiB per response message
        "BODY_TIMEOUT": 60,                       # default: 60 s to wait for a body chunk
    }

Only the edge (management commands, the app's checks, the testing helpers) reads Django
settings; what it reads is passed down as a :class:`BusSettings` (STYLE.md: no global
singleton read from inside the core).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from csp_bus.worker import DEFAULT_THREADS

__all__ = ["DEFAULT_LAYER", "BusSettings", "get_settings"]

DEFAULT_LAYER: Final = "memory://"

_KNOWN: Final = frozenset(
    {"LAYER", "ROUTING", "WORKER_THREADS", "RESPONSE_CHUNK_SIZE", "BODY_TIMEOUT"}
)


@dataclass(frozen=True, kw_only=True)
class BusSettings:
    """What the Django adapter needs to know, with the documented defaults."""

    #: Layer URL (``memory://``, ``redis://host:port/db?capacity=...``).
    layer: str = DEFAULT_LAYER
    #: Dotted path to a router or a list of routes; ``None`` serves Django views only.
    routing: str | None = None
    #: Threads running consumers in each worker process.
    worker_threads: int = DEFAULT_THREADS
    #: Largest ``content`` of one response message; bigger bodies go out in several.
    response_chunk_size: int = 256 * 1024
    #: Seconds a ViewConsumer waits for the next chunk of a streamed request body.
    body_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.layer, str) or not self.layer:
            raise ValueError(f"CSP_BUS['LAYER'] must be a layer URL string, not {self.layer!r}")
        if self.routing is not None and not isinstance(self.routing, str):
            raise ValueError(
                f"CSP_BUS['ROUTING'] must be a dotted path string, not {self.routing!r}"
            )
        if not isinstance(self.worker_threads, int) or self.worker_threads < 1:
            raise ValueError(f"CSP_BUS['WORKER_THREADS'] must be >= 1, not {self.worker_threads!r}")
        # 1 MiB is the default message limit; leave room for the other keys.
        if not isinstance(self.response_chunk_size, int) or not (
            1024 <= self.response_chunk_size <= 900 * 1024
        ):
            raise ValueError(
                "CSP_BUS['RESPONSE_CHUNK_SIZE'] must be an int from 1024 to 921600, "
                f"not {self.response_chunk_size!r}"
            )
        if not isinstance(self.body_timeout, int | float) or self.body_timeout <= 0:
            raise ValueError(f"CSP_BUS['BODY_TIMEOUT'] must be > 0, not {self.body_timeout!r}")

    @classmethod
    def from_mapping(
        cls, value: Mapping[str, Any] | None, *, environ: Mapping[str, str] | None = None
    ) -> BusSettings:
        """Build from a ``CSP_BUS`` dict; unknown keys raise ``ValueError`` naming them."""
        env = os.environ if environ is None else environ
        value = dict(value or {})
        unknown = sorted(set(value) - _KNOWN)
        if unknown:
            raise ValueError(
                f"CSP_BUS has unknown key(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(_KNOWN))}"
            )
        kwargs: dict[str, Any] = {
            "layer": value.get("LAYER") or env.get("CSP_BUS_LAYER") or DEFAULT_LAYER
        }
        for key in ("ROUTING", "WORKER_THREADS", "RESPONSE_CHUNK_SIZE", "BODY_TIMEOUT"):
            if key in value:
                kwargs[key.lower()] = value[key]
        return cls(**kwargs)


def get_settings() -> BusSettings:
    """Read ``settings.CSP_BUS`` (Django must be configured)."""
    from django.conf import settings

    return BusSettings.from_mapping(getattr(settings, "CSP_BUS", None))
