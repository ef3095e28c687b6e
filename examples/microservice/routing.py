"""The consumers of the order-tracking microservice, and their routes.

Plain synchronous functions (they run in worker threads) plus one async consumer (it
runs on the service's Trio loop). ``csp-bus worker examples.microservice.routing`` would
run them in a separate worker process just as well.
"""

from __future__ import annotations

import logging
import threading

from csp_bus.consumers import Group, Message
from csp_bus.delay import send_later
from csp_bus.routing import route

log = logging.getLogger("microservice")

# The service's own state. Consumers run in several threads at once: guard it.
_lock = threading.Lock()
totals: dict[str, float] = {}
orders: dict[str, int] = {}


def order_placed(message: Message, region: str) -> None:
    """``{"region": "eu-west", "order": "A-17", "amount": 12.5}`` from the cron job."""
    amount = float(message["amount"])
    with _lock:
        totals[region] = totals.get(region, 0.0) + amount
        orders[region] = orders.get(region, 0) + 1
        count = orders[region]
    log.info("order %s in %s: %.2f (%d so far)", message["order"], region, amount, count)
    # Everyone watching the dashboard group hears about it...
    Group("dashboard").send({"region": region, "orders": count})
    # ...and in 2 seconds, the delay service reminds us to check the payment.
    send_later("orders.check-payment", {"order": message["order"]}, delay=2.0)


def check_payment(message: Message) -> None:
    log.info("checking the payment of order %s", message["order"])


async def report(message: Message) -> None:
    """Answer ``{"reply_channel": ...}`` with the totals (async: runs on the loop)."""
    with _lock:
        snapshot = {"totals": dict(totals), "orders": dict(orders)}
    await message.reply_channel.asend(snapshot)  # type: ignore[union-attr]


def watch(message: Message) -> None:
    """``{"reply_channel": ...}``: join the dashboard group."""
    Group("dashboard").add(message.reply_channel)  # type: ignore[arg-type]


routes = [
    # The region comes from the message's "region" key: a regex filter, a named group.
    route("orders.placed", order_placed, region=r"^(?P<region>[a-z]+-[a-z]+)$"),
    route("orders.check-payment", check_payment),
    route("orders.report", report),
    route("orders.watch", watch),
]
