"""Data binding: a model's saves and deletes sent to a group, so live pages update
without polling.

::

    # myapp/apps.py, in AppConfig.ready():
    from csp_bus.adapters.django.binding import bind_model
    bind_model(Message, group=lambda m: f"room-{m.room_id}", fields=["author", "text"])

    # a WebSocket consumer joins the group at connect:
    Group(f"room-{room}").add(message.reply_channel)

Every save or delete of a ``Message`` then sends the group one message that a WebSocket
reply channel turns into a text frame::

    {"text": "{\\"model\\": \\"myapp.message\\", \\"action\\": \\"create\\", \\"pk\\": 7,
              \\"data\\": {\\"author\\": \\"ann\\", \\"text\\": \\"hi\\"}}"}

``action`` is ``create``, ``update`` or ``delete``; ``data`` holds ``fields`` as Django's
JSON serializer writes them (all concrete fields when ``fields`` is ``None``). The send
happens after the transaction commits (``transaction.on_commit``), so a browser that
fetches the object on the event sees it. Inside a consumer the worker's layer is used;
anywhere else (a view under another server, the admin, a shell, a cron job) the layer
of ``CSP_BUS["LAYER"]``, which must then be a shared ``redis://`` layer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.core import serializers
from django.db import models, transaction
from django.db.models.signals import post_delete, post_save

from csp_bus.errors import BusError

__all__ = ["Binding", "bind_model"]

logger = logging.getLogger("csp_bus.django")

GroupSpec = str | Callable[[Any], str | Iterable[str]]


class Binding:
    """Sends ``model``'s changes to ``group``; :meth:`connect` wires the signals."""

    def __init__(
        self,
        model: type[models.Model],
        *,
        group: GroupSpec,
        fields: Sequence[str] | None = None,
        actions: Iterable[str] = ("create", "update", "delete"),
    ) -> None:
        self.model = model
        self.group = group
        self.fields = list(fields) if fields is not None else None
        self.actions = frozenset(actions)
        unknown = self.actions - {"create", "update", "delete"}
        if unknown:
            raise ValueError(f"unknown binding actions {sorted(unknown)}")
        self._uid = f"csp_bus.binding.{model._meta.label_lower}.{id(self)}"

    def connect(self) -> Binding:
        post_save.connect(self._saved, sender=self.model, weak=False, dispatch_uid=self._uid)
        post_delete.connect(self._deleted, sender=self.model, weak=False, dispatch_uid=self._uid)
        return self

    def disconnect(self) -> None:
        post_save.disconnect(sender=self.model, dispatch_uid=self._uid)
        post_delete.disconnect(sender=self.model, dispatch_uid=self._uid)

    def groups_for(self, instance: models.Model) -> list[str]:
        if isinstance(self.group, str):
            return [self.group]
        found = self.group(instance)
        return [found] if isinstance(found, str) else list(found)

    def payload(self, instance: models.Model, action: str) -> dict[str, Any]:
        """The event for one change (override to shape it differently)."""
        record = json.loads(serializers.serialize("json", [instance], fields=self.fields))[0]
        return {
            "model": self.model._meta.label_lower,
            "action": action,
            "pk": record["pk"],
            "data": record["fields"],
        }

    def message(self, instance: models.Model, action: str) -> dict[str, Any]:
        """The bus message: a WebSocket text frame carrying :meth:`payload` as JSON."""
        return {"text": json.dumps(self.payload(instance, action), default=str)}

    def _saved(self, sender: Any, instance: models.Model, created: bool, **kwargs: Any) -> None:
        if kwargs.get("raw"):
            return  # fixtures being loaded
        self._schedule(instance, "create" if created else "update")

    def _deleted(self, sender: Any, instance: models.Model, **kwargs: Any) -> None:
        self._schedule(instance, "delete")

    def _schedule(self, instance: models.Model, action: str) -> None:
        if action not in self.actions:
            return
        # Build the message now (a deleted row cannot be read after the commit).
        groups = self.groups_for(instance)
        message = self.message(instance, action)
        using = instance._state.db or "default"
        transaction.on_commit(lambda: _send(groups, message), using=using)


def _send(groups: list[str], message: dict[str, Any]) -> None:
    from csp_bus.consumers import current_context

    try:
        context = current_context()
        if context is not None:
            for group in groups:
                context.sync.send_group(group, message)
            return
        from csp_bus.sync import connect

        from .conf import get_settings

        with connect(get_settings().layer) as bus:
            for group in groups:
                bus.send_group(group, message)
    except BusError:
        # A change is saved whether or not live pages hear of it: log, never fail the save.
        logger.exception("data binding could not send to %s", groups)


def bind_model(
    model: type[models.Model],
    *,
    group: GroupSpec,
    fields: Sequence[str] | None = None,
    actions: Iterable[str] = ("create", "update", "delete"),
) -> Binding:
    """Send ``model``'s saves and deletes to ``group`` (a name, or a function of the
    instance returning one or several names); returns the connected :class:`Binding`."""
    return Binding(model, group=group, fields=fields, actions=actions).connect()
