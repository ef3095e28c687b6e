"""The public surface of ``csp_bus`` is pinned: a name added to or dropped from
``csp_bus.__all__`` is a decision, made by editing this list too."""

from __future__ import annotations

import inspect

import csp_bus
import csp_bus.errors

PUBLIC = [
    "BusError",
    "ChannelFull",
    "ChannelLayer",
    "InvalidChannelName",
    "InvalidGroupName",
    "InvalidLayerURL",
    "InvalidMessage",
    "LayerClosed",
    "LayerError",
    "LayerOptions",
    "LayerTimeout",
    "LayerUnavailable",
    "MessageTooLarge",
    "RemoteProtocolError",
    "UsageError",
    "__version__",
    "open_layer",
]


def test_all_is_pinned() -> None:
    assert sorted(csp_bus.__all__) == sorted(PUBLIC)
    assert len(set(csp_bus.__all__)) == len(csp_bus.__all__)


def test_every_exported_name_exists() -> None:
    for name in csp_bus.__all__:
        assert hasattr(csp_bus, name), name


def test_every_error_is_importable_from_csp_bus() -> None:
    for name in csp_bus.errors.__all__:
        assert getattr(csp_bus, name) is getattr(csp_bus.errors, name)
        assert name in csp_bus.__all__


def test_every_error_has_one_root() -> None:
    classes = [
        obj
        for _, obj in inspect.getmembers(csp_bus.errors, inspect.isclass)
        if obj.__module__ == "csp_bus.errors"
    ]
    assert classes
    for cls in classes:
        assert issubclass(cls, csp_bus.BusError), cls


def test_error_tree() -> None:
    e = csp_bus
    usage = [e.InvalidChannelName, e.InvalidMessage, e.InvalidLayerURL, e.LayerClosed]
    for cls in usage:
        assert issubclass(cls, e.UsageError)
    assert issubclass(e.InvalidGroupName, e.InvalidChannelName)
    assert issubclass(e.MessageTooLarge, e.InvalidMessage)
    assert issubclass(e.LayerUnavailable, e.LayerError)
    assert issubclass(e.LayerUnavailable, ConnectionError)
    assert issubclass(e.LayerTimeout, e.LayerError)
    assert issubclass(e.LayerTimeout, TimeoutError)
    assert not issubclass(e.ChannelFull, e.UsageError)
    assert not issubclass(e.ChannelFull, e.LayerError)
    assert e.RemoteProtocolError("bad", hint=400).hint == 400


def test_version_is_a_string() -> None:
    assert isinstance(csp_bus.__version__, str)
    assert csp_bus.__version__.count(".") >= 2
