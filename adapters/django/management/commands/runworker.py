"""``manage.py runworker``: run the project's consumers (Django views included).

The options are those of ``csp-bus worker``; the routes are ``CSP_BUS["ROUTING"]`` plus
``http.request`` -> Django views (see :func:`csp_bus.adapters.django.routing.project_router`).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from csp_bus.errors import BusError

from ...conf import get_settings
from ...routing import project_router


class Command(BaseCommand):  # type: ignore[misc]  # Django ships no types
    help = (
        "Receive on the channels the project routes (CSP_BUS['ROUTING'], and http.request "
        "for Django views) and run each message's consumer in a pool of threads. "
        "SIGTERM/SIGINT: stop receiving, let running consumers finish within "
        "--grace-period (a second signal stops at once)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        from csp_bus.worker import add_worker_arguments

        parser.add_argument("--layer", metavar="URL", help='default: CSP_BUS["LAYER"]')
        add_worker_arguments(
            parser,
            threads_default=None,
            threads_help='consumers running at once (default: CSP_BUS["WORKER_THREADS"], 8)',
        )
        parser.add_argument(
            "--no-views",
            action="store_true",
            help="do not serve Django views (http.request) in this worker",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        import trio

        from csp_bus.layers import open_layer
        from csp_bus.worker import Worker, configure_logging, run_until_signal

        bus = get_settings()
        url = options["layer"] or bus.layer
        threads = options["threads"] or bus.worker_threads
        configure_logging(options["verbosity"] > 1)
        if url.split("://", 1)[0].lower() == "memory":
            self.stderr.write(
                f"warning: {url} lives inside this process: no server can reach this "
                'worker. Set CSP_BUS["LAYER"] to redis://..., or use runserver, which runs '
                "server and workers in one process."
            )
        try:
            router = project_router(bus, views=not options["no_views"])

            async def main() -> None:
                async with open_layer(url) as layer:
                    worker = Worker(
                        layer,
                        router,
                        threads=threads,
                        only_channels=options["only_channels"],
                        exclude_channels=options["exclude_channels"],
                        message_retries=options["message_retries"],
                        grace_period=options["grace_period"],
                    )
                    self.stdout.write(
                        f"runworker: {threads} threads on {url}, channels "
                        f"{', '.join(sorted(worker.channels))}"
                    )
                    self.stdout.flush()
                    await run_until_signal(worker.run, worker.stop, name="runworker")

            trio.run(main)
        except BusError as exc:
            raise CommandError(str(exc)) from exc
