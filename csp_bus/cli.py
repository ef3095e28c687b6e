"""The ``csp-bus`` command line.

``csp-bus send CHANNEL JSON``, ``receive CHANNEL...``, ``stats``; other modules add
their commands (``worker``, ``serve``, ``delay``) through a ``register(subparsers)``
function called from :func:`build_parser`. Exit codes: 0 ok, 1 runtime error, 2 usage
error. Errors go to stderr without a traceback unless ``--debug``.

JSON has no byte strings: a value ``{"$bytes": "<base64>"}`` stands for ``bytes`` both
ways (in the JSON given to ``send`` and in what ``receive`` prints).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from collections.abc import Sequence
from typing import Any

from .errors import BusError, UsageError
from .sync import connect, default_url

__all__ = ["CommandError", "add_common_options", "build_parser", "from_json", "main", "to_json"]

_BYTES_KEY = "$bytes"


class CommandError(Exception):
    """A failure reported to the user as ``csp-bus: error: ...`` with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _decode_bytes(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_BYTES_KEY} and isinstance(value[_BYTES_KEY], str):
            try:
                return base64.b64decode(value[_BYTES_KEY], validate=True)
            except binascii.Error as exc:
                raise CommandError(f"invalid base64 in {_BYTES_KEY}: {exc}", 2) from exc
        return {key: _decode_bytes(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_bytes(item) for item in value]
    return value


def from_json(text: str) -> dict[str, Any]:
    """Parse a message given on the command line (``{"$bytes": b64}`` -> bytes)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"the message is not valid JSON: {exc}", 2) from exc
    if not isinstance(value, dict):
        raise CommandError(f"the message must be a JSON object, not {type(value).__name__}", 2)
    return dict(_decode_bytes(value))


def _encode_bytes(value: Any) -> Any:
    if isinstance(value, bytes):
        return {_BYTES_KEY: base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {key: _encode_bytes(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encode_bytes(item) for item in value]
    return value


def to_json(value: Any) -> str:
    """One JSON line for a message or figure (bytes -> ``{"$bytes": b64}``)."""
    return json.dumps(_encode_bytes(value), ensure_ascii=False, sort_keys=True)


def _shared_layer_url(args: argparse.Namespace) -> str:
    url: str = args.layer
    if url.split("://", 1)[0].lower() == "memory":
        raise CommandError(
            f"'csp-bus {args.command}' runs in its own process, and a memory:// layer lives "
            "inside one process: nothing else would see it. Point --layer (or "
            "CSP_BUS_LAYER) at a shared layer, e.g. --layer redis://127.0.0.1:6379/0",
            2,
        )
    return url


def _cmd_send(args: argparse.Namespace) -> int:
    message = from_json(args.message)
    with connect(_shared_layer_url(args)) as bus:
        if args.group:
            bus.send_group(args.channel, message)
        elif args.wait is not None:
            bus.send_wait(args.channel, message, timeout=args.wait)
        else:
            bus.send(args.channel, message)
    return 0


def _cmd_receive(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        raise CommandError("--count must be at least 1", 2)
    received = 0
    with connect(_shared_layer_url(args)) as bus:
        while args.count is None or received < args.count:
            found = bus.receive(*args.channels, timeout=args.timeout)
            if found is None:
                break
            channel, message = found
            print(to_json({"channel": channel, "message": message}), flush=True)
            received += 1
    if args.count is not None and received < args.count:
        print(
            f"csp-bus: timed out after {args.timeout} s with {received} of {args.count} messages",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    with connect(_shared_layer_url(args)) as bus:
        print(json.dumps(bus.stats(args.channel), indent=2, sort_keys=True))
    return 0


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--layer URL`` and ``--debug``, which every command takes (for modules that
    register their own command)."""
    parser.add_argument(
        "--layer",
        default=default_url(),
        metavar="URL",
        help="channel layer URL (default: $CSP_BUS_LAYER, else memory://), "
        "e.g. redis://127.0.0.1:6379/0",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def build_parser() -> argparse.ArgumentParser:
    """The parser with every command, including those other modules register."""
    parser = argparse.ArgumentParser(
        prog="csp-bus",
        description="A Go-style CSP message bus: send, receive and serve over channels.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"csp-bus {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    send = commands.add_parser(
        "send",
        help="send one message to a channel or group",
        description="Send one JSON message to CHANNEL (or to every member of a group with "
        '--group). Bytes are written {"$bytes": "<base64>"}. For cron jobs: exits 0 once '
        "the message is on the bus.",
    )
    send.add_argument("channel", metavar="CHANNEL", help="channel (or group) name")
    send.add_argument("message", metavar="JSON", help='the message, e.g. \'{"text": "hi"}\'')
    send.add_argument("--group", action="store_true", help="CHANNEL names a group: send_group")
    send.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="when the channel is full, wait up to SECONDS for room instead of failing",
    )
    add_common_options(send)
    send.set_defaults(func=_cmd_send)

    receive = commands.add_parser(
        "receive",
        help="receive messages and print them as JSON lines",
        description="Wait on one or more channels at once and print each message as a JSON "
        'line {"channel": ..., "message": ...}.',
    )
    receive.add_argument("channels", nargs="+", metavar="CHANNEL")
    receive.add_argument("--count", type=int, metavar="N", help="stop after N messages")
    receive.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="stop when no message arrives for SECONDS (exit 1 if --count was not reached)",
    )
    add_common_options(receive)
    receive.set_defaults(func=_cmd_receive)

    stats = commands.add_parser(
        "stats",
        help="print the layer's statistics as JSON",
        description="Print counters, channel depths and group sizes (ASGI statistics names); "
        "with CHANNEL, that channel's depth, age and capacity.",
    )
    stats.add_argument("channel", nargs="?", metavar="CHANNEL")
    add_common_options(stats)
    stats.set_defaults(func=_cmd_stats)

    # Commands defined by other modules register themselves here.
    from .server.cli import register as register_serve

    register_serve(commands)
    from .worker import register as register_worker

    register_worker(commands)
    from .delay import register as register_delay

    register_delay(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``csp-bus`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except CommandError as exc:
        if args.debug:
            raise
        print(f"csp-bus: error: {exc}", file=sys.stderr)
        return exc.code
    except BusError as exc:
        if args.debug:
            raise
        code = 2 if isinstance(exc, UsageError) else 1
        print(f"csp-bus: error: {exc}", file=sys.stderr)
        return code
    except OSError as exc:
        if args.debug:
            raise
        print(f"csp-bus: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"csp-bus: internal error: {type(exc).__name__}: {exc} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
