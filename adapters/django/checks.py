"""System checks (``manage.py check``, and every management command at start-up).

* ``csp_bus.E001``: ``CSP_BUS`` is malformed (unknown key, wrong type).
* ``csp_bus.E002``: the layer URL has an unknown scheme or a bad parameter.
* ``csp_bus.E003``: ``CSP_BUS["ROUTING"]`` cannot be imported or is not a valid route list.
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Tags, register

from csp_bus.errors import BusError
from csp_bus.layers import layer_class

from .conf import BusSettings, get_settings

__all__ = ["check_settings"]


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        settings = get_settings()
    except ValueError as exc:
        return [Error(str(exc), hint="See docs/django.md, 'Settings'.", id="csp_bus.E001")]
    return check_layer(settings) + check_routing(settings)


def check_layer(settings: BusSettings) -> list[CheckMessage]:
    try:
        # Parsing the URL checks scheme and parameters; nothing connects here.
        layer_class(settings.layer).from_url(settings.layer)
    except BusError as exc:
        return [
            Error(
                f"CSP_BUS['LAYER'] is not a usable layer URL: {exc}",
                hint="Use memory:// (one process) or redis://HOST:PORT/DB.",
                id="csp_bus.E002",
            )
        ]
    return []


def check_routing(settings: BusSettings) -> list[CheckMessage]:
    if not settings.routing:
        return []
    from csp_bus.routing import Router

    try:
        Router(settings.routing)
    except (BusError, ImportError, AttributeError, TypeError, ValueError) as exc:
        return [
            Error(
                f"CSP_BUS['ROUTING'] = {settings.routing!r} cannot be loaded: {exc}",
                hint="Name a module with a 'routes' list, or 'module:attribute'.",
                id="csp_bus.E003",
            )
        ]
    return []
