"""The project's routes: ``CSP_BUS["ROUTING"]`` plus Django views on ``http.request``."""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Mapping
from typing import Any

from csp_bus.routing import (
    Match,
    Router,
    RoutingError,
    import_object,
    include,
    load_routes,
    route,
)

from .conf import BusSettings
from .handler import StaticFilesConsumer, ViewConsumer

__all__ = ["DjangoRouter", "django_consumer", "load_routing", "project_router"]


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


def django_consumer(consumer: Callable[..., Any]) -> Callable[..., Any]:
    """``consumer`` with Django's per-request database hygiene around it.

    Django closes database connections that are past ``CONN_MAX_AGE`` or broken at the
    start and end of every request (``close_old_connections`` on ``request_started`` and
    ``request_finished``). Consumers are not requests, so without this a worker
    thread's connection would live for ever and could go stale.
    """
    from django.db import close_old_connections

    @functools.wraps(consumer)
    def run(message: Any, **kwargs: Any) -> Any:
        close_old_connections()
        try:
            return consumer(message, **kwargs)
        finally:
            close_old_connections()

    return run


class DjangoRouter(Router):
    """A Router whose sync consumers run with :func:`django_consumer` around them
    (the ViewConsumer, which follows Django's request cycle itself, excepted)."""

    def __init__(self, routes: Any) -> None:
        super().__init__(routes)
        self._wrapped: dict[Any, Callable[..., Any]] = {}
        self._lock = threading.Lock()

    def match(self, channel: str, content: Mapping[str, Any]) -> Match | None:
        found = super().match(channel, content)
        if found is None:
            return None
        consumer = found.consumer
        owner = getattr(consumer, "__self__", consumer)
        if isinstance(owner, ViewConsumer) or inspect.iscoroutinefunction(consumer):
            return found
        wrapped = self._wrapped.get(consumer)
        if wrapped is None:
            # One wrapper per consumer (bounded by the routes), so the worker's caches
            # keyed by consumer stay small.
            with self._lock:
                wrapped = self._wrapped.setdefault(consumer, django_consumer(consumer))
        return Match(wrapped, found.kwargs, found.route)


def project_router(
    settings: BusSettings, *, views: bool = True, static: bool = False
) -> DjangoRouter:
    """A Router for the project: its own routes, then ``http.request`` -> ViewConsumer.

    The ViewConsumer route comes last, so a project routing ``http.request`` itself (a
    long-poll consumer on one path, say) keeps its route and Django serves the rest.
    ``views=False`` leaves Django views out (a worker that only runs socket consumers);
    ``static=True`` serves ``STATIC_URL`` too (:class:`StaticFilesConsumer`, runserver).
    Raises :class:`csp_bus.routing.RoutingError` for a bad routing path. Consumers run
    with Django's database connection hygiene around them (:class:`DjangoRouter`).
    """
    entries: list[object] = []
    if settings.routing:
        entries.append(include(load_routing(settings.routing)))
    if views:
        consumer = StaticFilesConsumer(settings) if static else ViewConsumer(settings)
        entries.append(route("http.request", consumer))
        # Stops streaming responses whose client left; this drains http.disconnect too.
        entries.append(route("http.disconnect", consumer.on_disconnect))
    return DjangoRouter(entries)
