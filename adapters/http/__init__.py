"""The HTTP adapter: HTTP/1.1 (h11) under Trio, speaking ``http.*`` messages.

``csp-bus serve --adapter http``. The sans-IO core is :mod:`.protocol`; the Trio glue
is :mod:`.server`. Other adapters reach the HTTP listener through :func:`front` (the
WebSocket adapter registers its upgrade handler there). See ``docs/http.md``.
"""

from __future__ import annotations

import argparse
from typing import Any

import trio

from csp_bus.errors import UsageError
from csp_bus.server.adapter import Adapter
from csp_bus.server.config import ServerConfig, parse_seconds, parse_size
from csp_bus.server.runtime import ServerRuntime

from .server import HTTPConfig, HTTPFront, UpgradeHandler, UpgradeRequest, front, linger_close
from .static import parse_mount

__all__ = [
    "HTTPAdapter",
    "HTTPConfig",
    "HTTPFront",
    "UpgradeHandler",
    "UpgradeRequest",
    "adapter",
    "front",
    "linger_close",
]


class HTTPAdapter(Adapter):
    """HTTP/1.0 and 1.1 requests -> ``http.request``; responses from ``reply_channel``."""

    name = "http"
    summary = "HTTP/1.1 (h11): http.request / http.disconnect, responses on reply_channel"
    listener_protocol = "http"

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        defaults = HTTPConfig()
        group.add_argument(
            "--response-timeout",
            type=parse_seconds,
            default=defaults.response_timeout,
            metavar="SECONDS",
            help="answer 504 when no response starts within SECONDS ('off' to wait for "
            f"ever; default {defaults.response_timeout:g})",
        )
        group.add_argument(
            "--long-poll",
            action="append",
            default=[],
            metavar="PATH_REGEX",
            help="paths matching this regex (re.search) have no response timeout: "
            "long-poll and streaming endpoints (repeatable)",
        )
        group.add_argument(
            "--static",
            action="append",
            default=[],
            metavar="PREFIX=DIR",
            help="serve files under URL PREFIX from DIR directly (GET/HEAD, ETag), e.g. "
            "/static/=./static (repeatable; for development and small assets)",
        )
        group.add_argument(
            "--max-body-size",
            type=parse_size,
            default=defaults.max_body_size,
            metavar="BYTES",
            help="answer 413 to larger request bodies (e.g. 10M; default 64M; 0: no limit)",
        )
        group.add_argument(
            "--max-header-size",
            type=parse_size,
            default=defaults.max_header_size,
            metavar="BYTES",
            help="answer 431 to larger request heads (default 16k)",
        )
        group.add_argument(
            "--body-chunk-size",
            type=parse_size,
            default=defaults.body_chunk_size,
            metavar="BYTES",
            help="bodies up to this size travel inside http.request; larger ones are "
            "streamed over body_channel in chunks of this size (default 256k)",
        )
        group.add_argument(
            "--header-timeout",
            type=parse_seconds,
            default=defaults.header_timeout,
            metavar="SECONDS",
            help="answer 408 when a request head takes longer "
            f"(default {defaults.header_timeout:g})",
        )
        group.add_argument(
            "--keep-alive-timeout",
            type=parse_seconds,
            default=defaults.keep_alive_timeout,
            metavar="SECONDS",
            help="close idle keep-alive connections after SECONDS "
            f"(default {defaults.keep_alive_timeout:g})",
        )
        group.add_argument(
            "--body-timeout",
            type=parse_seconds,
            default=defaults.body_timeout,
            metavar="SECONDS",
            help="give up on a request body that stalls for SECONDS "
            f"(default {defaults.body_timeout:g})",
        )

    def configure(self, args: argparse.Namespace, server: ServerConfig) -> HTTPConfig:
        selected = list(getattr(args, "adapter", None) or ["http"])
        layer = str(getattr(args, "layer", "memory://"))
        welcome = (
            getattr(args, "app", None) is None
            and layer.split("://", 1)[0].lower() == "memory"
            and "http" in selected
        )
        try:
            return HTTPConfig(
                max_header_size=args.max_header_size,
                max_body_size=args.max_body_size or None,
                body_chunk_size=args.body_chunk_size,
                header_timeout=args.header_timeout,
                keep_alive_timeout=args.keep_alive_timeout,
                body_timeout=args.body_timeout,
                response_timeout=args.response_timeout,
                long_poll_paths=tuple(args.long_poll),
                serve_requests="http" in selected,
                static=tuple(parse_mount(item) for item in args.static),
                welcome_page=welcome,
            )
        except (ValueError, TypeError) as exc:  # re.error is a ValueError
            raise UsageError(f"http adapter: {exc}") from exc

    async def run(
        self,
        runtime: ServerRuntime,
        config: Any,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        http_front = HTTPFront(runtime, config or HTTPConfig())
        runtime.extensions["http.front"] = http_front
        if http_front.config.serve_requests and not http_front.config.welcome_page:
            http_front.dispatcher = await runtime.open_dispatcher("http.response")
        runtime.set_connection_handler(http_front.handle_connection)
        task_status.started()
        await trio.sleep_forever()


adapter = HTTPAdapter()
