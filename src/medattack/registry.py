"""Typed registries: extend medattack by registering, never by growing an if/elif chain.

    ATTACKS = Registry[type[Attack]]("attack", plugins="medattack.attacks")

    @ATTACKS.register("gcg")          # in src/medattack/attacks/gcg.py
    class GCG: ...

    ATTACKS["gcq"]  # UnknownNameError: unknown attack 'gcq'; did you mean 'gcg'? Known: ...

A registry names the package (or modules) its plugins live in and imports all of them the first time
it is read, so a plugin is one new file in that package and nothing else: no import list to extend,
and no entry point (CLI, stage, Python API) that can miss it. Plugins from other installed packages come
through the `medattack.plugins` entry-point group: each entry names a module, imported before the first
registry is read, whose decorators register into medattack's registries like its own files do:

    # pyproject.toml of another package
    [project.entry-points."medattack.plugins"]
    my_attacks = "my_package.attacks"      # @ATTACKS.register("my-attack", summary=..., citation=...)

An entry carries metadata beside the object (`PluginInfo`: summary, citation, modality, white-box or
black-box, what it needs); `medattack list ... --json` and docs/plugins.md show it.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Generic, Literal, TypeVar

from medattack.errors import ConfigError, UnknownNameError

T = TypeVar("T")
ENTRY_POINT_GROUP = "medattack.plugins"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PluginInfo:
    """What a registered plugin declares beside itself (shown by `list` and docs/plugins.md)."""

    summary: str = ""  # one sentence; default: the first paragraph of the object's docstring
    citation: str = ""  # the paper or project it implements, e.g. "Zou et al. 2023, arXiv 2307.15043"
    modality: Literal["text", "image", "text+image", "any"] = "any"  # what it reads or changes
    access: Literal["white-box", "black-box", "any"] = "any"  # what it needs of the model it works on
    needs: tuple[str, ...] = ()  # "gpu", "network", "api-key", or a package ("open_clip_torch")
    origin: str = "medattack"  # the distribution that registered it (another package's, for entry points)


_ENTRY_POINTS_LOADED = False


def load_entry_points() -> list[str]:
    """Import every module of the `medattack.plugins` entry-point group once; returns their names. A plugin
    package that fails to import is named in a warning and left out (the rest of medattack works)."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return []
    _ENTRY_POINTS_LOADED = True
    loaded = []
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as error:  # noqa: BLE001 - another package's import error must not stop medattack
            log.warning("plugin %s (%s) could not be imported and is left out: %s: %s", entry.name, entry.value,
                        type(error).__name__, error)
            continue
        loaded.append(entry.name)
    return loaded


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
        self._info: dict[str, PluginInfo] = {}
        self._loaded = False
        self._loading = False

    def register(self, name: str, *, summary: str = "", citation: str = "",
                 modality: Literal["text", "image", "text+image", "any"] = "any",
                 access: Literal["white-box", "black-box", "any"] = "any",
                 needs: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator that registers its target under `name`, with its metadata (PluginInfo)."""

        def decorate(obj: T) -> T:
            module = getattr(obj, "__module__", "") or ""
            origin = "medattack" if module.split(".")[0] == "medattack" else module.split(".")[0]
            self.add(name, obj, PluginInfo(summary, citation, modality, access, tuple(needs), origin))
            return obj

        return decorate

    def add(self, name: str, obj: T, info: PluginInfo | None = None) -> None:
        if name in self._entries and self._entries[name] is not obj:
            raise ConfigError(f"{self.kind} {name!r} is registered twice; pick another name.")
        self._entries[name] = obj
        self._info[name] = info or PluginInfo()

    def info(self, name: str) -> PluginInfo:
        """The plugin's metadata; its summary defaults to the first paragraph of its docstring."""
        self.load()
        found = self._info.get(name) or PluginInfo()
        if found.summary:
            return found
        doc = (getattr(self[name], "__doc__", None) or "").strip().split("\n\n")[0]
        return replace(found, summary=" ".join(doc.split()))

    def load(self) -> None:
        """Import every plugin module once (each registers its entries as it is imported), then the other
        packages' plugins (entry points). A registry counts as loaded only once every import succeeded: a
        failed import raises here and again at the next read, never leaving a silently partial registry.
        Reads during the imports (a plugin module reading its own registry) see what is registered so far."""
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            for name in self.plugins:
                module = importlib.import_module(name)
                if hasattr(module, "__path__"):  # a package: every module in it
                    for info in pkgutil.iter_modules(module.__path__, prefix=f"{name}."):
                        importlib.import_module(info.name)
            load_entry_points()
            self._loaded = True
        finally:
            self._loading = False

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
