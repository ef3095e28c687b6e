"""A cron-style script: send one event into the microservice and exit.

    python examples/microservice/cron.py eu-west A-17 12.5
    python examples/microservice/cron.py --report          # print the service's totals

Plain blocking code: ``csp_bus.sync.connect()`` opens the layer for the ``with`` block,
``using(bus)`` lets ``Channel``/``Group`` go through it. Same URL as the service.
"""

from __future__ import annotations

import argparse
import json
import os

from csp_bus import sync
from csp_bus.consumers import Channel, using


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("region", nargs="?")
    parser.add_argument("order", nargs="?")
    parser.add_argument("amount", nargs="?", type=float)
    parser.add_argument("--report", action="store_true", help="ask for the totals")
    args = parser.parse_args()
    url = os.environ.get("CSP_BUS_LAYER", "redis://127.0.0.1:6379/0")
    with sync.connect(url) as bus, using(bus):
        if args.report:
            reply = bus.new_channel("cron.report?")
            Channel("orders.report").send({"reply_channel": reply})
            found = bus.receive(reply, timeout=5)
            if found is None:
                print("no answer within 5 s: is the service running?")
                return 1
            print(json.dumps(found[1], sort_keys=True))
            return 0
        if args.amount is None:
            parser.error("give REGION ORDER AMOUNT, or --report")
        Channel("orders.placed").send(
            {"region": args.region, "order": args.order, "amount": args.amount}
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
