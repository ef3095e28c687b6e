"""``manage.py runserver``: the csp-bus protocol server and workers in one process.

Django's own runserver options (address:port, ``--noreload``, ``--nothreading``,
``--ipv6``, ``--skip-checks``) keep their meaning; the autoreloader restarts the whole
process when code changes. HTTP and WebSocket are served on one port by the csp-bus
adapters; worker threads in the same process run the consumers (Django views included)
over the project's layer (``memory://`` by default). With ``--noworker`` only the server
runs: start workers with ``manage.py runworker`` against a shared ``redis://`` layer.
In ``DEBUG`` (or with ``--insecure``) static files are served, as by
``django.contrib.staticfiles``' runserver; put ``"csp_bus.adapters.django"`` *before*
``"django.contrib.staticfiles"`` in ``INSTALLED_APPS`` so that this command wins.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import threading
from typing import Any

from django.apps import apps
from django.conf import settings as django_settings
from django.core.management.base import CommandError, CommandParser
from django.core.management.commands.runserver import Command as DjangoRunserver
from django.db import connections
from django.utils import autoreload

from csp_bus.errors import BusError

from ...conf import get_settings
from ...routing import project_router


def _adapter_arguments(adapters: list[Any], layer: str) -> argparse.Namespace:
    """The adapters' own options at their defaults, as ``csp-bus serve --adapter ...
    --app ...`` would parse them (the Django project is the app)."""
    parser = argparse.ArgumentParser(add_help=False)
    for adapter in adapters:
        adapter.add_arguments(parser.add_argument_group(adapter.name))
    namespace, _ = parser.parse_known_args([])
    namespace.adapter = [adapter.name for adapter in adapters]
    namespace.app = "django"
    namespace.layer = layer
    return namespace


class Command(DjangoRunserver):  # type: ignore[misc]  # Django ships no types
    help = (
        "Starts the csp-bus development server: HTTP and WebSocket on one port, with "
        "worker threads running the project's consumers and Django views in this process."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--noworker",
            action="store_false",
            dest="run_worker",
            help="run only the protocol server; run workers with 'manage.py runworker'",
        )
        parser.add_argument(
            "--threads",
            type=int,
            metavar="N",
            help='worker threads (default: CSP_BUS["WORKER_THREADS"], 8)',
        )
        parser.add_argument("--layer", metavar="URL", help='default: CSP_BUS["LAYER"]')
        parser.add_argument(
            "--nostatic",
            action="store_false",
            dest="use_static_handler",
            help="do NOT serve static files at STATIC_URL",
        )
        parser.add_argument(
            "--insecure",
            action="store_true",
            dest="insecure_serving",
            help="serve static files even if DEBUG is False",
        )

    def inner_run(self, *args: Any, **options: Any) -> None:
        import trio

        autoreload.raise_last_exception()
        if not options["skip_checks"]:
            self.stdout.write("Performing system checks...\n\n")
            self.check(display_num_errors=True)
        self.check_migrations()
        for connection in connections.all(initialized_only=True):
            connection.close()
        static = (
            options["use_static_handler"]
            and apps.is_installed("django.contrib.staticfiles")
            and (django_settings.DEBUG or options["insecure_serving"])
        )
        try:
            trio.run(functools.partial(self._serve, options, static=static))
        except BaseException as exc:
            leaf = _unwrap(exc)
            if isinstance(leaf, KeyboardInterrupt):
                if options.get("shutdown_message"):
                    self.stdout.write(options["shutdown_message"])
                sys.exit(0)
            if isinstance(leaf, BusError | OSError | CommandError):
                self.stderr.write(f"Error: {leaf}")
                # sys.exit does not end the process from the autoreloader's thread.
                os._exit(1)
            raise

    async def _serve(self, options: dict[str, Any], *, static: bool) -> None:
        import trio

        from csp_bus.layers import open_layer
        from csp_bus.server import ServerConfig, resolve_adapters, run_server
        from csp_bus.server.adapter import AdapterNotFound
        from csp_bus.worker import Worker

        bus = get_settings()
        url = options["layer"] or bus.layer
        try:
            adapters = resolve_adapters(["http", "websocket"])
        except AdapterNotFound:
            try:
                adapters = resolve_adapters(["http"])
            except AdapterNotFound as exc:
                raise CommandError(f"csp-bus cannot serve HTTP here: {exc}") from exc
            self.stderr.write("warning: no WebSocket adapter installed; serving HTTP only")
        host = self.addr.strip("[]") if self._raw_ipv6 else self.addr
        if host == "0":
            host = "0.0.0.0"
        config = ServerConfig(binds=((host, int(self.port)),))
        adapter_args = _adapter_arguments(adapters, url)
        pairs = [(adapter, adapter.configure(adapter_args, config)) for adapter in adapters]
        if not options["run_worker"] and url.split("://", 1)[0].lower() == "memory":
            self.stderr.write(
                f"warning: --noworker with {url}: no worker in another process can reach "
                'this server; set CSP_BUS["LAYER"] to redis://...'
            )
        async with open_layer(url) as layer, trio.open_nursery() as nursery:
            worker = None
            if options["run_worker"]:
                threads = options["threads"] or bus.worker_threads
                router = project_router(bus, static=static)
                worker = Worker(layer, router, threads=threads)
                await nursery.start(worker.run)
            server_done = trio.Event()

            async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    await run_server(layer, config, pairs, task_status=task_status)
                finally:
                    server_done.set()

            runtime = await nursery.start(serve)
            port = int(runtime.addresses[0].rsplit(":", 1)[1].rstrip("/"))
            what = " + ".join(adapter.name for adapter in adapters)
            if worker is not None:
                what += f", {worker.threads} worker threads"
            self._announce(port, f"{what}, layer {url}")
            if threading.current_thread() is threading.main_thread():
                # --noreload: stop gracefully on Ctrl-C/SIGTERM (in-flight responses end,
                # WebSockets close with 1001), a second signal stops at once. Under the
                # autoreloader this runs in a thread and the reloader owns the signals.
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async with trio.open_nursery() as watching:

                        async def watch() -> None:
                            received = 0
                            async for _ in signals:
                                received += 1
                                if received > 1:
                                    nursery.cancel_scope.cancel()
                                    return
                                runtime.shutdown()

                        watching.start_soon(watch)
                        await server_done.wait()
                        watching.cancel_scope.cancel()
            else:
                await server_done.wait()
            if worker is not None:
                worker.stop()

    def _announce(self, port: int, what: str) -> None:
        from datetime import datetime

        if self._raw_ipv6:
            address = f"[{self.addr}]"
        elif self.addr == "0":
            address = "0.0.0.0"
        else:
            address = self.addr
        quit_command = "CTRL-BREAK" if sys.platform == "win32" else "CONTROL-C"
        self.stdout.write(
            f"{datetime.now().strftime('%B %d, %Y - %X')}\n"
            f"Django version {self.get_version()}, using settings "
            f"{django_settings.SETTINGS_MODULE!r}\n"
            f"Starting csp-bus development server at http://{address}:{port}/ ({what})\n"
            f"Quit the server with {quit_command}."
        )
        if os.environ.get("DJANGO_RUNSERVER_HIDE_WARNING") != "true":
            self.stdout.write(
                self.style.WARNING(
                    "WARNING: This is a development server. Do not use it in a production "
                    "setting: run 'csp-bus serve' and 'manage.py runworker' (docs/django.md)."
                )
            )
        self.stdout.flush()


def _unwrap(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-exception groups, else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
