"""The project's routes: ``CSP_BUS["ROUTING"]`` plus Django views on ``http.request``."""

from __future__ import annotations

from typing import Any

from csp_bus.routing import Router, RoutingError, import_object, include, load_routes, route

from .conf import BusSettings
from .handler import StaticFilesConsumer, ViewConsumer

__all__ = ["load_routing", "project_router"]


def load_routing(path: str) -> Any:
    """The routes ``CSP_BUS["ROUTING"]`` names, in any of three spellings.

    ``"myproject.routing"`` (a module with ``routes``, ``router`` or
    ``channel_routing``), ``"myproject.routing:routes"`` or ``"myproject.routing.routes"``.
    Raises :class:`~csp_bus.routing.RoutingError` naming the path.
    """
    try:
        return load_routes(path)
    except (ImportError, AttributeError) as first:
        if ":" not in path and "." in path:
            try:
                return import_object(path)
            except (ImportError, AttributeError):
                pass
        raise RoutingError(f"cannot load routes {path!r}: {first}") from first


def project_router(settings: BusSettings, *, views: bool = True, static: bool = False) -> Router:
    """A Router for the project: its own routes, then ``http.request`` -> ViewConsumer.

    The ViewConsumer route comes last, so a project routing ``http.request`` itself (a
    long-poll consumer on one path, say) keeps its route and Django serves the rest.
    ``views=False`` leaves Django views out (a worker that only runs socket consumers);
    ``static=True`` serves ``STATIC_URL`` too (:class:`StaticFilesConsumer`, runserver).
    Raises :class:`csp_bus.routing.RoutingError` for a bad routing path.
    """
    entries: list[object] = []
    if settings.routing:
        entries.append(include(load_routing(settings.routing)))
    if views:
        consumer = StaticFilesConsumer(settings) if static else ViewConsumer(settings)
        entries.append(route("http.request", consumer))
        # Stops streaming responses whose client left; this drains http.disconnect too.
        entries.append(route("http.disconnect", consumer.on_disconnect))
    return Router(entries)
