"""The Django adapter: Django views, sessions and auth over the bus.

Add ``"csp_bus.adapters.django"`` to ``INSTALLED_APPS``. Then:

* ``manage.py runserver`` serves HTTP and WebSocket through csp-bus (server and worker
  threads in one process, memory layer by default);
* ``manage.py runworker`` runs consumers (Django views included) against a shared layer;
* ``manage.py send_event CHANNEL JSON`` sends one message from a cron job.

The public names live in submodules so that importing this package imports nothing of
Django: :mod:`.handler` (``ViewConsumer``), :mod:`.sessions` and :mod:`.auth` (consumer
decorators), :mod:`.binding` (model signals to groups), :mod:`.testing`.
See ``docs/django.md``.
"""
