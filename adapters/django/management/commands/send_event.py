"""``manage.py send_event CHANNEL JSON``: put one message on the bus (cron jobs, scripts)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from csp_bus.cli import CommandError as CliError
from csp_bus.cli import from_json
from csp_bus.errors import BusError

from ...conf import get_settings


class Command(BaseCommand):  # type: ignore[misc]  # Django ships no types
    help = (
        "Send one JSON message to CHANNEL (or with --group to every member of a group) on "
        'the project\'s layer (CSP_BUS["LAYER"]). Bytes are written {"$bytes": "<base64>"}. '
        "Exits 0 once the message is on the bus."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("channel", metavar="CHANNEL")
        parser.add_argument("message", metavar="JSON", help='e.g. \'{"text": "hi"}\'')
        parser.add_argument("--group", action="store_true", help="CHANNEL names a group")
        parser.add_argument(
            "--wait",
            type=float,
            metavar="SECONDS",
            help="when the channel is full, wait up to SECONDS for room instead of failing",
        )
        parser.add_argument("--layer", metavar="URL", help='default: CSP_BUS["LAYER"]')

    def handle(self, *args: Any, **options: Any) -> None:
        from csp_bus.sync import connect

        url = options["layer"] or get_settings().layer
        try:
            message = from_json(options["message"])
        except CliError as exc:
            raise CommandError(str(exc)) from exc
        if url.split("://", 1)[0].lower() == "memory":
            self.stderr.write(
                f"warning: {url} lives inside this command's process, so nobody else will "
                'receive the message; set CSP_BUS["LAYER"] to redis://... (or pass --layer)'
            )
        try:
            with connect(url) as bus:
                if options["group"]:
                    bus.send_group(options["channel"], message)
                elif options["wait"] is not None:
                    bus.send_wait(options["channel"], message, timeout=options["wait"])
                else:
                    bus.send(options["channel"], message)
        except BusError as exc:
            raise CommandError(str(exc)) from exc
