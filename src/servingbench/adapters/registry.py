"""Adapter registry: built-ins and third-party adapters, all through the ``servingbench.adapters`` entry points.

Modules are imported lazily, on first use of an adapter, so listing frameworks never imports a framework.
"""

from __future__ import annotations

import difflib
import os
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points

from servingbench.contract import Adapter

GROUP = "servingbench.adapters"


class UnknownFramework(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


ENV = "SERVINGBENCH_ADAPTERS"


def _entry_points() -> dict[str, EntryPoint]:
    """Installed entry points, plus ``SERVINGBENCH_ADAPTERS="name=module:Class,..."`` for unpackaged adapters."""
    return _load(os.environ.get(ENV, ""))


@lru_cache(maxsize=4)
def _load(extra: str) -> dict[str, EntryPoint]:
    eps = {ep.name: ep for ep in entry_points(group=GROUP)}
    for item in filter(None, (x.strip() for x in extra.split(","))):
        name, sep, value = item.partition("=")
        if not sep or ":" not in value:
            raise ValueError(f"{ENV}: {item!r} is not of the form name=module:Class")
        eps[name.strip()] = EntryPoint(name.strip(), value.strip(), GROUP)
    return eps


def names() -> list[str]:
    """Registered adapter names, sorted."""
    return sorted(_entry_points())


def builtin_names() -> list[str]:
    """The adapters this package ships (the rest come from other packages or ``SERVINGBENCH_ADAPTERS``)."""
    return sorted(n for n, ep in _entry_points().items() if ep.value.startswith("servingbench.adapters."))


def suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name.lower(), choices, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"{hint} Known: {', '.join(choices)}."


def get_class(name: str) -> type[Adapter]:
    """The adapter class for ``name``; raises :class:`UnknownFramework` with suggestions."""
    eps = _entry_points()
    if name not in eps:
        raise UnknownFramework(f"unknown framework {name!r}.{suggest(name, sorted(eps))}")
    cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise TypeError(f"entry point {name!r} ({eps[name].value}) is not an Adapter subclass")
    return cls


def get(name: str) -> Adapter:
    """A new adapter instance for ``name``."""
    return get_class(name)()
