"""pacs_gateway/reactor.py overrides methods of pynetdicom's classes, private ones included,
written against one pynetdicom release: these tests fail loudly when another one is installed."""

from __future__ import annotations

import inspect

import pynetdicom
import pytest

from pacs_gateway import reactor

WRITTEN_FOR = "3.0.4"

_SUBCLASSES = [
    reactor.EventDrivenDUL,
    reactor.EventDrivenAssociation,
    reactor.LargeReadSocket,
    reactor.EventDrivenRequestHandler,
]


def _overrides() -> list[tuple[type, str]]:
    """(base class, name) of every method a reactor subclass overrides."""
    out = []
    for cls in _SUBCLASSES:
        base = cls.__mro__[1]
        for name, value in vars(cls).items():
            if inspect.isfunction(value) and hasattr(base, name) and name != "__init__":
                out.append((base, name))
    return out


def test_the_installed_pynetdicom_is_the_release_the_reactor_overrides_were_written_for() -> None:
    assert pynetdicom.__version__ == WRITTEN_FOR, (
        f"pacs_gateway/reactor.py overrides private methods of pynetdicom {WRITTEN_FOR}; "
        f"{pynetdicom.__version__} is installed: re-read each override against its source"
    )


def test_the_reactor_overrides_private_methods_that_exist() -> None:
    names = {name for _, name in _overrides()}
    assert {"_read_pdu_data", "_run_reactor", "_create_association"} <= names


@pytest.mark.parametrize("base,name", _overrides(), ids=lambda v: getattr(v, "__name__", v))
def test_each_overridden_method_keeps_pynetdicoms_signature(base: type, name: str) -> None:
    ours = next(c for c in _SUBCLASSES if c.__mro__[1] is base)
    assert inspect.signature(getattr(ours, name)).parameters.keys() == (
        inspect.signature(getattr(base, name)).parameters.keys()
    )
