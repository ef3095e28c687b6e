"""System checks (``manage.py check``, and every management command at start-up).

* ``csp_bus.E001``: ``CSP_BUS`` is malformed (unknown key, wrong type).
* ``csp_bus.E002``: the layer URL has an unknown scheme or a bad parameter.
* ``csp_bus.E003``: ``CSP_BUS["ROUTING"]`` cannot be imported or is not a valid route list.
* ``csp_bus.W001``: ``django.contrib.staticfiles`` comes before this app in
  ``INSTALLED_APPS``, so its ``runserver`` (plain WSGI, no WebSocket) wins.
* ``csp_bus.W002``: ``SESSION_ENGINE`` keeps sessions in cookies, which
  ``channel_session`` cannot use (a socket has no cookie to write to).
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Tags, Warning, register

from csp_bus.errors import BusError
from csp_bus.layers import layer_class

from .conf import BusSettings, get_settings

__all__ = ["check_settings"]


@register(Tags.compatibility)  # type: ignore[untyped-decorator]
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        settings = get_settings()
    except ValueError as exc:
        return [Error(str(exc), hint="See docs/django.md, 'Settings'.", id="csp_bus.E001")]
    return check_layer(settings) + check_routing(settings) + check_apps()


def check_apps() -> list[CheckMessage]:
    from django.conf import settings

    found: list[CheckMessage] = []
    names = [str(app) for app in settings.INSTALLED_APPS]
    ours = next((i for i, n in enumerate(names) if n.startswith("csp_bus.adapters.django")), None)
    static = next(
        (i for i, n in enumerate(names) if n.startswith("django.contrib.staticfiles")), None
    )
    if ours is not None and static is not None and static < ours:
        found.append(
            Warning(
                "django.contrib.staticfiles is listed before csp_bus.adapters.django in "
                "INSTALLED_APPS, so 'manage.py runserver' is staticfiles' plain WSGI server",
                hint="Move 'csp_bus.adapters.django' above 'django.contrib.staticfiles'.",
                id="csp_bus.W001",
            )
        )
    if settings.SESSION_ENGINE == "django.contrib.sessions.backends.signed_cookies":
        found.append(
            Warning(
                "SESSION_ENGINE stores sessions in cookies: channel_session (and "
                "enforce_ordering, channel_session_user) cannot store anything",
                hint="Use the db, cache or cached_db session engine.",
                id="csp_bus.W002",
            )
        )
    return found


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

    from .routing import load_routing

    try:
        Router(load_routing(settings.routing))
    except (BusError, ImportError, AttributeError, TypeError, ValueError) as exc:
        return [
            Error(
                f"CSP_BUS['ROUTING'] = {settings.routing!r} cannot be loaded: {exc}",
                hint="Name a module with a 'routes' list, or 'module:attribute'.",
                id="csp_bus.E003",
            )
        ]
    return []
