"""The Django application config: registers the system checks, nothing else at start-up."""

from __future__ import annotations

from django.apps import AppConfig


class CspBusConfig(AppConfig):  # type: ignore[misc]  # Django ships no types
    name = "csp_bus.adapters.django"
    label = "csp_bus"
    verbose_name = "csp-bus"

    def ready(self) -> None:
        # Importing the module registers its checks with Django's checks framework.
        from . import checks  # noqa: F401
