"""An order-tracking microservice that embeds the bus: its own Trio program, with the
workers (threads for the sync consumers) and the delay service inside it.

    python examples/microservice/service.py                # $CSP_BUS_LAYER or redis://127.0.0.1:6379/0
    python examples/microservice/cron.py eu-west A-17 12.5 # from cron, another process

Other processes reach it through the shared layer, hence redis:// (a memory:// layer
lives inside one process: a cron job could never see it). SIGTERM or Ctrl-C stops it
gracefully: no new messages are taken, running consumers finish, exit status 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from routing import routes

from csp_bus import open_layer
from csp_bus.delay import DelayService
from csp_bus.embedded import run_workers

log = logging.getLogger("microservice")


async def main(url: str) -> None:
    async with open_layer(url) as layer, trio.open_nursery() as nursery:
        workers = await nursery.start(run_workers, layer, routes)
        delays = await nursery.start(DelayService(layer).run)
        log.info("microservice ready on %s", url)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("got %s: stopping", signal.Signals(signum).name)
                delays.stop()  # on redis:// its due messages stay in Redis
                workers.stop()  # graceful: running consumers finish
                break


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    trio.run(main, os.environ.get("CSP_BUS_LAYER", "redis://127.0.0.1:6379/0"))
