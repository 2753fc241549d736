"""Frozen dataclass configs from YAML plus ``--key=value`` overrides, checked strictly.

Every stage has its own config class (``TrainConfig``, ``EncodeConfig``, ...). Nested
sections are dataclasses too and are addressed with dots: ``--model.bits=32``. An unknown
key or a value of the wrong type fails with :class:`ConfigError` naming the key and the
keys that are allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Mapping, Sequence, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key is unknown or its value has the wrong type."""


def _unknown_key(key: str, allowed: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(
        f"unknown config key {(where + key)!r}.{hint} Allowed keys here: {', '.join(sorted(allowed))}."
    )


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only lossless cases (int -> float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key {key!r}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"config key {key!r} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {type(value).__name__} {value!r}")
        item_tp = args[0] if args else Any
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config section {key!r} must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key {key!r} must be a number, got {type(value).__name__} {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} must be an integer, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key {key!r} must be a string, got {type(value).__name__} {value!r}")
    raise ConfigError(f"config key {key!r}: unsupported annotation {tp}")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from a plain mapping, refusing unknown keys and wrong types."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config {prefix or 'root'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(key, list(fields), prefix)
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """A plain, YAML/JSON-safe dict (tuples become lists)."""

    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def _parse_scalar(text: str) -> Any:
    # YAML's own scalar rules: "32" -> 32, "1e-3" -> 0.001, "true" -> True, "[1, 2]" -> list.
    value = yaml.safe_load(text)
    return text if value is None and text not in ("null", "~", "") else value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``key=value`` / ``--key=value`` strings (dotted keys) to a nested dict copy."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ConfigError(f"override {item!r} must look like --key=value (e.g. --model.bits=32)")
        key, raw = text.split("=", 1)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a config section")
        node[parts[-1]] = _parse_scalar(raw)
    return out


def load(cls: type[T], path: str | None = None, overrides: Sequence[str] = ()) -> T:
    """Load ``cls`` from a YAML file (local or ``s3://``) and apply overrides."""
    data: dict = {}
    if path:
        from rayhash import storage

        data = yaml.safe_load(storage.read_text(path)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level of a config file must be a mapping")
    return from_dict(cls, apply_overrides(data, overrides))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def replace(cfg: T, **changes: Any) -> T:
    return dataclasses.replace(cfg, **changes)
