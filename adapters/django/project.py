"""The Django project of ``DJANGO_SETTINGS_MODULE`` as a csp-bus app (like ``wsgi.py``).

::

    export DJANGO_SETTINGS_MODULE=mysite.settings
    csp-bus worker csp_bus.adapters.django.project --layer redis://127.0.0.1:6379/0
    csp-bus serve --adapter http --adapter websocket --app csp_bus.adapters.django.project

Importing this module sets Django up (``django.setup()``) and builds :data:`router`:
``CSP_BUS["ROUTING"]`` plus ``http.request`` -> Django views. Import it only where a
Django project should run, as you would its ``wsgi.py``.
"""

from __future__ import annotations

import django

from .conf import get_settings
from .routing import project_router

__all__ = ["router"]

django.setup(set_prefix=False)

#: The project's routes (what ``csp-bus worker``/``serve --app`` load from this module).
router = project_router(get_settings())
