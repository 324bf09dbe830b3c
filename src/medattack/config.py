"""Dataclass configs: YAML loading that rejects unknown keys, and `--set key=value` overrides.

Every config is a frozen dataclass whose defaults live only in its field definitions, each with a
help string: `field(default=..., metadata={"help": "..."})`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from medattack.errors import ConfigError

C = TypeVar("C")


def option(default: Any, help: str) -> Any:  # noqa: A002 - "help" reads best at call sites
    """A dataclass field with a default and a help string (immutable defaults only)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The config of a plugin that has no settings of its own."""


def config_help(cls: type) -> dict[str, str]:
    """Field name -> help string of a config dataclass."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML value to the field's declared type where it is unambiguous."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], key) if len(non_none) == 1 else value
    if dataclasses.is_dataclass(annotation) and isinstance(value, Mapping):
        return from_mapping(annotation, value, key)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key {key!r} expects a list, got {value!r}.")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, key) for v in value)
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"config key {key!r} expects true or false, got {value!r}.")
    if annotation is int and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ConfigError(f"config key {key!r} expects an integer, got {value!r}.")
    if annotation is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if annotation is str and not isinstance(value, str):
        raise ConfigError(f"config key {key!r} expects a string, got {value!r}.")
    return value


def from_mapping(cls: type[C], data: Mapping[str, Any], where: str = "config") -> C:
    """Build config `cls` from a mapping; unknown keys are an error that suggests the right one."""
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
        kwargs[key] = _coerce(value, hints[key], key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse `key=value` strings; values are read as YAML (`seed=3`, `tasks=[a, b]`), and a dotted
    key sets a nested setting (`options.rounds=5`, `target.api.base_url=http://...`)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key.strip()}: the value {raw!r} is not valid YAML ({exc.problem}).") from None
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key.strip()}: {part!r} is set to a value and has settings under it.")
        node[leaf] = value
    return out


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` over `base`, mappings merged key by key (other values replaced)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _defaults_under(cls: type, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The default values of the mapping-typed fields that `overrides` sets part of, so that
    `--set metrics.keyword_asr.mode=anywhere` changes one metric and keeps the others."""
    out = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if isinstance(overrides.get(f.name), Mapping) and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if isinstance(default, Mapping):
                out[f.name] = default
    return out


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> C:
    """Load a config from an optional YAML file, then apply overrides (later wins, nested keys merged)."""
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        where = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}.") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of keys to values at the top level.")
        data.update(loaded)
    overrides = overrides or {}
    data = merge(merge(_defaults_under(cls, overrides), data), overrides)
    return from_mapping(cls, data, where)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }
