"""The project's routes: ``CSP_BUS["ROUTING"]`` plus Django views on ``http.request``."""

from __future__ import annotations

from csp_bus.routing import Router, route

from .conf import BusSettings
from .handler import ViewConsumer

__all__ = ["project_router"]


def project_router(settings: BusSettings, *, views: bool = True) -> Router:
    """A Router for the project: its own routes, then ``http.request`` -> ViewConsumer.

    The ViewConsumer route comes last, so a project routing ``http.request`` itself (a
    long-poll consumer on one path, say) keeps its route and Django serves the rest.
    ``views=False`` leaves Django views out (a worker that only runs socket consumers).
    Raises :class:`csp_bus.routing.RoutingError` for a bad routing path.
    """
    entries: list[object] = []
    if settings.routing:
        entries.append(Router(settings.routing))
    if views:
        entries.append(route("http.request", ViewConsumer(settings)))
    return Router(entries)
