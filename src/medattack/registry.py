"""Typed registries: extend medattack by registering, never by growing an if/elif chain.

    ATTACKS = Registry[type[Attack]]("attack", plugins="medattack.attacks")

    @ATTACKS.register("gcg")          # in src/medattack/attacks/gcg.py
    class GCG: ...

    ATTACKS["gcq"]  # UnknownNameError: unknown attack 'gcq'; did you mean 'gcg'? Known: ...

A registry names the package (or modules) its plugins live in and imports all of them the first time
it is read, so a plugin is one new file in that package and nothing else: no import list to extend,
and no entry point (CLI, stage, Python API) that can miss it.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from medattack.errors import ConfigError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping with helpful errors on typos, filled from its plugin modules on first use.

    Args:
        kind: what the entries are, for messages ("attack", "scorer").
        plugins: dotted names of the packages (every module in them) or modules that register entries.
    """

    def __init__(self, kind: str, plugins: str | tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.plugins = (plugins,) if isinstance(plugins, str) else plugins
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its target under `name`."""

        def decorate(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorate

    def add(self, name: str, obj: T) -> None:
        if name in self._entries and self._entries[name] is not obj:
            raise ConfigError(f"{self.kind} {name!r} is registered twice; pick another name.")
        self._entries[name] = obj

    def load(self) -> None:
        """Import every plugin module once (each registers its entries as it is imported)."""
        if self._loaded:
            return
        self._loaded = True
        for name in self.plugins:
            module = importlib.import_module(name)
            if hasattr(module, "__path__"):  # a package: every module in it
                for info in pkgutil.iter_modules(module.__path__, prefix=f"{name}."):
                    importlib.import_module(info.name)

    def __getitem__(self, name: str) -> T:
        self.load()
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r};{hint} Known: {', '.join(sorted(self._entries))}."
            ) from None

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self.load()
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        self.load()
        return len(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self.load()
        return sorted(self._entries.items())
