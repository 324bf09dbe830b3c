"""Dataclass configs: YAML loading that rejects unknown keys, and `--set key=value` overrides.

Every config is a frozen dataclass whose defaults live only in its field definitions, each with a
help string: `field(default=..., metadata={"help": "..."})`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from medattack.errors import ConfigError

C = TypeVar("C")


def option(default: Any, help: str, *, low: float | None = None, high: float | None = None) -> Any:  # noqa: A002
    """A dataclass field with a default and a help string (immutable defaults only); a number may carry its range
    [low, high] (either end open), which every value read from a mapping, a file or --set is checked against."""
    metadata: dict[str, Any] = {"help": help}
    if low is not None or high is not None:
        metadata["range"] = (low, high)
    return dataclasses.field(default=default, metadata=metadata)


def _in_range(value: Any, bounds: tuple[float | None, float | None], key: str, where: str) -> None:
    """A one-line ConfigError naming the key and its range when a number lies outside it (None passes)."""
    low, high = bounds
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{where}: config key {key!r} must be {_span(low, high)}, got {_short(value)}.")


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The config of a plugin that has no settings of its own."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _span(low: float | None, high: float | None) -> str:
    """A range as words: "from 1 to 64", "1 or more", "64 or less"."""
    if low is not None and high is not None:
        return f"from {low:g} to {high:g}"
    return f"{low:g} or more" if low is not None else f"{high:g} or less"


def config_help(cls: type) -> dict[str, str]:
    """Field name -> help string of a config dataclass, with its range where it has one."""
    return {f.name: f.metadata.get("help", "") + (f" ({_span(*f.metadata['range'])})" if "range" in f.metadata
                                                    else "") for f in dataclasses.fields(cls)}


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML value to the field's declared type where it is unambiguous."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"config key {key!r} must be one of {', '.join(map(repr, args))}, got "
                              f"{_short(value)}.{hint}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return coerce(value, non_none[0], key) if len(non_none) == 1 else value
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        if isinstance(value, Mapping):
            return from_mapping(annotation, value, key)
        if isinstance(value, str) and hasattr(annotation, "from_text"):  # e.g. a target as "api:gpt-4o"
            return annotation.from_text(value)
        raise ConfigError(f"config key {key!r} expects a mapping of {annotation.__name__} settings, got "
                          f"{_short(value)}.")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key {key!r} expects a list, got {_short(value)}.")
        inner = args[0] if args else Any
        return tuple(coerce(v, inner, key) for v in value)
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"config key {key!r} expects true or false, got {_short(value)}.")
    if annotation is int and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ConfigError(f"config key {key!r} expects an integer, got {_short(value)}.")
    if annotation is float:
        number = value
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as text
            try:
                number = float(value)
            except ValueError:
                number = None
        if not isinstance(number, int | float) or isinstance(number, bool) or not math.isfinite(number):
            raise ConfigError(f"config key {key!r} expects a finite number, got {_short(value)}.")
        return float(number)
    if annotation is str and not isinstance(value, str):
        raise ConfigError(f"config key {key!r} expects a string, got {_short(value)}.")
    return value


def from_mapping(cls: type[C], data: Mapping[str, Any], where: str = "config") -> C:
    """Build config `cls` from a mapping; unknown keys are an error that suggests the right one, a value outside its
    field's choices (Literal) or range (`option(low=, high=)`) one naming the key and what it takes."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expects a mapping of settings (key: value), got {_short(data)}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{where}: unknown key {key!r}.{hint} Known keys: {', '.join(sorted(fields))}."
            )
        kwargs[key] = coerce(value, hints[key], key)
        if "range" in fields[key].metadata:
            _in_range(kwargs[key], fields[key].metadata["range"], key, where)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


MAX_YAML_BYTES = 1 << 20  # a config file larger than this is refused
MAX_YAML_DEPTH = 64  # nesting of lists and mappings
MAX_YAML_ALIASES = 64  # `*alias` references (an alias bomb expands exponentially)


class _LimitedLoader(yaml.SafeLoader):
    """yaml.SafeLoader with limits on nesting depth and alias references."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise ConfigError(f"more than {MAX_YAML_ALIASES} YAML aliases (*name); write the values out.")
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise ConfigError(f"YAML nested deeper than {MAX_YAML_DEPTH} levels; configs are never that deep.")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML text with the limits above; every problem is one ConfigError naming `where`."""
    if len(text.encode("utf-8", "surrogateescape")) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_YAML_BYTES // 1024} KiB; a config is never that large.")
    loader = _LimitedLoader(text)
    try:
        return loader.get_single_data()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{where} is not valid YAML: {problem}{at}.") from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply.") from None
    finally:
        loader.dispose()


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse `key=value` strings; values are read as YAML (`seed=3`, `tasks=[a, b]`), and a dotted
    key sets a nested setting (`options.rounds=5`, `target.api.base_url=http://...`)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}.")
        value = load_yaml(raw, f"--set {key.strip()}") if raw.strip() else ""
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, Partial())
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key.strip()}: {part!r} is set to a value and has settings under it.")
        node[leaf] = value
    return out


class Partial(dict):
    """Some settings of a nested config, to merge into its current value rather than replace it
    (`--set options.rounds=5`, a typed flag); a plain mapping (`--set metrics={tto: {}}`) replaces."""


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` over `base`: Partial mappings merged key by key, other values replaced."""
    out = Partial(base) if isinstance(base, Partial) else dict(base)
    for key, value in overrides.items():
        if isinstance(value, Partial) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _defaults_under(cls: type, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The default values of the mapping-typed fields that `overrides` sets part of, so that
    `--set metrics.keyword_asr.mode=anywhere` changes one metric and keeps the others."""
    out = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if isinstance(overrides.get(f.name), Partial) and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if isinstance(default, Mapping):
                out[f.name] = default
    return out


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
    preset: str | None = None,
) -> C:
    """Load a config: its defaults, then a preset (`preset`, or a `preset:` key in the file; for the
    stage configs that declare `preset_stage`), then the YAML file, then `overrides` (later wins, nested
    keys merged)."""
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        where = str(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}.") from exc
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8.") from None
        loaded = load_yaml(text, str(path))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of keys to values at the top level.")
        data.update(loaded)
    overrides = overrides or {}
    stage = getattr(cls, "preset_stage", None)
    named = preset or (data.pop("preset", None) if stage else data.get("preset"))
    if named and hasattr(cls, "apply_preset"):  # a config of several stages (the run YAML) places it itself
        data = cls.apply_preset({**data, "preset": named}, str(named))
    elif named:
        if not stage:
            raise ConfigError(f"presets apply to the build, attack, query and score settings, not {cls.__name__}.")
        from medattack.presets import preset_layer

        data = under(preset_layer(str(named), stage, merge(data, overrides)), data)
    data = merge(merge(_defaults_under(cls, overrides), data), overrides)
    return from_mapping(cls, data, where)


def under(base: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` over `base`, mappings merged at every depth (a preset under a file: the file's
    `options: {rounds: 5}` keeps the preset's other options)."""
    out = dict(base)
    for key, value in data.items():
        out[key] = under(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) \
            else value
    return out


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }
