"""``csp-bus serve``: run interface-server adapters (and, embedded, the workers).

The options of the adapters named with ``--adapter`` (default ``http``) are added to the
command when it is parsed, so ``csp-bus serve --adapter websocket --help`` shows the
WebSocket adapter's options too. See ``docs/server.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from ..errors import UsageError
from ..worker import DEFAULT_THREADS
from .adapter import Adapter, resolve_adapters
from .config import DEFAULT_PORT, ServerConfig, parse_bind
from .listeners import BoundSocket, make_sockets
from .runtime import ServerRuntime, run_server

__all__ = ["register"]

logger = logging.getLogger("csp_bus.server")

#: WebSocket close code "service restart" (RFC 6455 registry), sent to clients when the
#: server process stops on SIGHUP (what ``--reload`` sends) instead of SIGTERM/SIGINT.
RESTART_CLOSE_CODE = 1012


def _adapter_names(args: Sequence[str]) -> list[str]:
    names: list[str] = []
    items = list(args)
    for index, item in enumerate(items):
        if item == "--adapter" and index + 1 < len(items):
            names.append(items[index + 1])
        elif item.startswith("--adapter="):
            names.append(item.split("=", 1)[1])
    return names or ["http"]


class _ServeParser(argparse.ArgumentParser):
    """Adds the chosen adapters' options before parsing (argparse has no two-phase
    parse; the ``--adapter`` values are read from the raw arguments first)."""

    _adapters_added: set[str]

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        raw = list(sys.argv[1:] if args is None else args)
        if not hasattr(self, "_adapters_added"):
            self._adapters_added = set()
        try:
            adapters = resolve_adapters(_adapter_names(raw))
        except UsageError as exc:
            self.error(str(exc))
        for adapter in adapters:
            if adapter.name in self._adapters_added:
                continue
            self._adapters_added.add(adapter.name)
            group = self.add_argument_group(
                f"{adapter.name} adapter",
                adapter.summary or f"options of the {adapter.name} adapter",
            )
            try:
                adapter.add_arguments(group)
            except argparse.ArgumentError as exc:
                self.error(f"adapter {adapter.name!r} has a clashing option: {exc}")
        namespace = namespace or argparse.Namespace()
        namespace.serve_argv = raw
        return super().parse_known_args(raw, namespace)


def _server_config(args: argparse.Namespace) -> ServerConfig:
    binds = tuple(parse_bind(item) for item in args.bind)
    if not binds and not args.unix and not args.fd:
        binds = (("127.0.0.1", DEFAULT_PORT),)
    return ServerConfig(
        binds=binds,
        unix=tuple(args.unix),
        fds=tuple(args.fd),
        certfile=args.certfile,
        keyfile=args.keyfile or (args.certfile if args.certfile else None),
        backlog=args.backlog,
        max_connections=args.max_connections,
        graceful_timeout=args.graceful_timeout,
        access_log=args.access_log,
        proxy_headers=args.proxy_headers,
        forwarded_allow_ips=tuple(args.forwarded_allow_ips.split(",")),
        root_path=args.root_path.rstrip("/") if args.root_path not in ("", "/") else "",
    )


def _is_memory(url: str) -> bool:
    return url.split("://", 1)[0].lower() == "memory"


async def _serve_main(
    args: argparse.Namespace,
    config: ServerConfig,
    adapters: list[tuple[Adapter, Any]],
    sockets: list[BoundSocket] | None,
) -> None:
    from ..layers import open_layer

    # Signals are caught from the start, so one arriving during start-up is not lost.
    # SIGHUP means "restart" (sent by --reload): the same graceful stop, but WebSocket
    # clients are told 1012 (service restart) instead of 1001 (going away).
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with open_layer(args.layer) as layer, trio.open_nursery() as nursery:
            worker = None
            if args.app is not None:
                from ..embedded import run_workers
                from ..worker import load_app

                worker = await nursery.start(
                    lambda task_status: run_workers(
                        layer, load_app(args.app), threads=args.threads, task_status=task_status
                    )
                )
            served = trio.Event()

            async def serve(task_status: trio.TaskStatus[ServerRuntime]) -> None:
                await run_server(layer, config, adapters, sockets=sockets, task_status=task_status)
                served.set()

            runtime: ServerRuntime = await nursery.start(serve)
            where = ", ".join(runtime.addresses) or "no sockets"
            app = f"app {args.app}" if args.app else "no app"
            print(
                f"csp-bus serve [{os.getpid()}]: {' + '.join(runtime.adapters)} on {where} "
                f"(layer {args.layer}, {app}); Ctrl-C or SIGTERM to stop",
                file=sys.stderr,
                flush=True,
            )
            with trio.CancelScope() as watching:

                async def stop_when_served() -> None:
                    await served.wait()
                    if worker is not None:
                        worker.stop()  # embedded workers get their own grace period
                    watching.cancel()

                nursery.start_soon(stop_when_served)
                async for signum in signals:
                    if runtime.stopping.is_set() or served.is_set():
                        nursery.cancel_scope.cancel()  # second signal: stop now
                    else:
                        logger.info("got %s: stopping gracefully", signal.Signals(signum).name)
                        if signum == signal.SIGHUP:
                            runtime.extensions["websocket.shutdown_code"] = RESTART_CLOSE_CODE
                        runtime.shutdown()


def _run_workers(
    args: argparse.Namespace, config: ServerConfig, adapters: list[tuple[Adapter, Any]]
) -> int:
    """Fork ``args.workers`` processes sharing the listening sockets."""
    sockets = make_sockets(config)
    for item in sockets:
        os.set_inheritable(item.sock.fileno(), True)
    children: list[int] = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:  # child
            # Its own process group: a terminal's Ctrl-C reaches the parent only, which
            # forwards it once (twice would mean "stop now" to the child).
            os.setpgid(0, 0)
            code = 0
            try:
                trio.run(_serve_main, args, config, adapters, sockets)
            except BaseException:
                logger.exception("server process failed")
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    for item in sockets:
        item.sock.close()

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)  # restart: WebSocket clients get 1012
    worst = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid in children:
            children.remove(pid)
            code = os.waitstatus_to_exitcode(status)
            worst = max(worst, code if code > 0 else 0)
    return worst


def _python_files(root: Path) -> dict[Path, float]:
    found: dict[Path, float] = {}
    for path in root.rglob("*.py"):
        parts = path.parts
        if any(p.startswith(".") or p in ("__pycache__", "node_modules") for p in parts):
            continue
        try:
            found[path] = path.stat().st_mtime
        except OSError:
            continue
    return found


def _run_reloading(args: argparse.Namespace) -> int:
    """Run the server in a child process; restart it when a ``.py`` file changes.

    Development only. It compares modification times once a second (a stat per file):
    simple and dependency-free, at the cost of a second of delay.
    """
    argv = [a for a in args.serve_argv if a != "--reload"]
    command = [sys.executable, "-m", "csp_bus", "serve", *argv]
    root = Path.cwd()
    stop = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while True:
        seen = _python_files(root)
        child = subprocess.Popen(command, process_group=0)  # see _run_workers
        changed = False
        while not stop and child.poll() is None:
            time.sleep(1.0)
            now = _python_files(root)
            if now != seen:
                changed = True
                print("csp-bus serve: change detected, restarting", file=sys.stderr, flush=True)
                break
        if child.poll() is None:
            # SIGHUP asks for a restart (WebSocket clients get 1012), SIGTERM for a stop (1001).
            child.send_signal(signal.SIGHUP if changed and not stop else signal.SIGTERM)
            try:
                child.wait(timeout=max(5.0, args.graceful_timeout + 1))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if stop or not changed:
            return 0 if stop else (child.returncode or 0)


def _cmd_serve(args: argparse.Namespace) -> int:
    from ..cli import CommandError
    from ..worker import configure_logging

    configure_logging(args.debug)
    if args.workers < 1:
        raise CommandError("--workers must be at least 1", 2)
    if args.workers > 1 and _is_memory(args.layer):
        raise CommandError(
            f"--workers {args.workers} forks separate processes, and a memory:// layer lives "
            "inside one process: each server would have a private bus its workers cannot "
            "reach. Use a shared layer (--layer redis://127.0.0.1:6379/0) or --workers 1",
            2,
        )
    config = _server_config(args)
    adapters = resolve_adapters(args.adapter or ["http"])
    pairs = [(adapter, adapter.configure(args, config)) for adapter in adapters]
    if args.app is not None:
        from ..worker import load_app

        load_app(args.app)  # fail now, with the reason, rather than in every process
    if args.reload:
        return _run_reloading(args)
    if args.workers > 1:
        return _run_workers(args, config, pairs)
    trio.run(_serve_main, args, config, pairs, None)
    return 0


def register(subparsers: Any) -> None:
    """Add ``csp-bus serve`` to the CLI."""
    from ..cli import add_common_options

    parser = subparsers.add_parser(
        "serve",
        help="run the interface server (HTTP, WebSocket, ... adapters)",
        description="Serve network protocols over the bus: requests become messages "
        "(http.request, websocket.connect, ...), answers come back on each "
        "connection's reply_channel. With the memory:// layer and --app, workers run in "
        "this process; with redis:// they may run anywhere (csp-bus worker APP). Without "
        "--app on memory://, a built-in page explains how to point the server at an app. "
        "SIGTERM/SIGINT: stop accepting, finish in-flight responses within "
        "--graceful-timeout, exit.",
    )
    parser.__class__ = _ServeParser
    parser.add_argument(
        "--adapter",
        action="append",
        metavar="NAME",
        help="adapter to run (repeatable; default http); installed adapters register in "
        "the entry-point group csp_bus.adapters",
    )
    parser.add_argument(
        "--app",
        metavar="APP",
        help="routes to run in embedded workers in this process, e.g. myapp.routing:routes",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        metavar="N",
        help=f"embedded worker threads with --app (default {DEFAULT_THREADS})",
    )
    listen = parser.add_argument_group("listeners")
    listen.add_argument(
        "--bind",
        "-b",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help=f"TCP address (repeatable): 127.0.0.1:8000, [::1]:8000, :8000 for every "
        f"interface (default 127.0.0.1:{DEFAULT_PORT})",
    )
    listen.add_argument(
        "--unix", action="append", default=[], metavar="PATH", help="Unix socket (repeatable)"
    )
    listen.add_argument(
        "--fd",
        action="append",
        type=int,
        default=[],
        metavar="N",
        help="inherited listening socket file descriptor (repeatable)",
    )
    listen.add_argument("--certfile", metavar="PEM", help="TLS certificate chain (enables TLS)")
    listen.add_argument("--keyfile", metavar="PEM", help="TLS private key (default: --certfile)")
    listen.add_argument("--backlog", type=int, default=2048, metavar="N", help="listen backlog")
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument(
        "--max-connections",
        type=int,
        default=10_000,
        metavar="N",
        help="connections served at once; more wait in the backlog (default 10000)",
    )
    runtime.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, time in-flight responses get (default 30)",
    )
    runtime.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Common Log Format lines on stderr (default on)",
    )
    runtime.add_argument(
        "--proxy-headers",
        action="store_true",
        help="take client address and scheme from X-Forwarded-For/-Proto of trusted proxies",
    )
    runtime.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1,::1",
        metavar="LIST",
        help="trusted proxies: addresses, networks, 'unix', '*' (default 127.0.0.1,::1)",
    )
    runtime.add_argument(
        "--root-path", default="", metavar="PATH", help="mount point sent as root_path, e.g. /api"
    )
    runtime.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="fork N server processes sharing the sockets (redis:// layers only)",
    )
    runtime.add_argument(
        "--reload", action="store_true", help="restart when a .py file changes (development)"
    )
    add_common_options(parser)
    parser.set_defaults(func=_cmd_serve)
