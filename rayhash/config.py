"""Frozen dataclass configs from YAML plus ``--key=value`` overrides, typed by their fields.

Every stage has its own config class (``TrainConfig``, ``EncodeConfig``, ...). Nested
sections are dataclasses too and are addressed with dots: ``--model.bits=32``.

The field's annotation decides what a value means, not YAML's guess. An override's text and
every unquoted scalar of a YAML file are read as the field's type:

- ``int``: decimal digits, ``010`` is 10 (never octal), ``1_000`` is 1000; ``1.5`` is an error.
- ``float``: Python's float syntax, so ``1e-3`` is 0.001 (YAML 1.1 would make it a string).
- ``bool``: ``true``/``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0``, in any case.
- ``str``: the text as written, digits included (``--run.name=010`` is "010"). A bare
  ``true``, ``false``, ``yes``, ``no``, ``on``, ``off``, ``null`` or ``~`` is an error: YAML
  turns these into a bool or None, so a writer may have meant either. Quote the word to mean
  it: ``--run.name='"no"'`` on the command line, ``name: "no"`` in a file.
- ``X | None``: ``null``, ``none``, ``~`` or empty text is None; anything else is read as X.
- ``Literal[...]``: exactly one of the listed values.
- ``tuple[X, ...]`` / ``list[X]``: ``[a, b]`` or ``a,b``; ``[]`` or empty text is empty.
- a section (a nested dataclass) is set key by key: ``--optim.lr=1e-3``.
- a section whose dataclass depends on one of its keys (the ``method`` section: ``method.name``
  picks the registered method's dataclass) is read as the dataclass that key names. Such a
  section's class defines ``config_variants()``, returning the key and ``{value: dataclass}``
  (each a subclass of it); when the key is absent, its default picks.
- ``dict`` / ``Any`` (free-form options handed on, e.g. Serve's deployment options): YAML's rules.

Values that are not text (quoted YAML strings, a checkpoint's saved config, Serve's arguments)
are checked, not converted; only an int becomes a float. An unknown key, or a value that does
not read as its field's type, fails with :class:`ConfigError` naming the key, the expected
type and the value, before any work starts. So does a config file that cannot be read.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key is unknown, its value has the wrong type, or the config file cannot be read."""


class _Text(str):
    """Unquoted text (an override, or a plain YAML scalar): its field's type decides what it means."""

    __slots__ = ()


class _Loader(yaml.SafeLoader):
    """YAML's structure (mappings, lists, quoting), with every plain scalar left as :class:`_Text`."""


# Only the merge key (``<<: *defaults``) keeps its implicit resolver; numbers, bools and nulls are
# left to the field that receives them.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag == "tag:yaml.org,2002:merge"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_text(loader: _Loader, node: yaml.ScalarNode) -> str:
    value = loader.construct_scalar(node)
    return _Text(value) if node.style is None else value


_Loader.add_constructor("tag:yaml.org,2002:str", _construct_text)

_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "~"}  # YAML 1.1 makes these bool / None
_NULLS = {"", "null", "none", "~"}
_SCALARS = {int: "an integer (int)", float: "a number (float)", bool: "true or false (bool)", str: "a string (str)"}


def _unknown_key(key: str, allowed: Sequence[str], where: str, note: str = "") -> ConfigError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(
        f"unknown config key {(where + key)!r}{note}.{hint} Allowed keys here: {', '.join(sorted(allowed))}."
    )


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _SCALARS:
        return _SCALARS[tp]
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in (tuple, list):
        return f"a list of {_describe(args[0]) if args else 'values'}"
    if dataclasses.is_dataclass(tp):
        return f"a section of keys ({', '.join(f.name for f in dataclasses.fields(tp))})"
    return "a mapping" if origin is dict or tp is dict else str(tp)


def _wrong(key: str, tp: Any, value: Any, why: str = "") -> ConfigError:
    shown = repr(str(value)) if isinstance(value, _Text) else f"{type(value).__name__} {value!r}"
    return ConfigError(f"config key {key!r} must be {_describe(tp)}, got {shown}{why}")


def _load_text(text: str, key: str) -> Any:
    try:
        return yaml.load(text, _Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"config key {key!r}: {text!r} is not valid YAML ({' '.join(str(e).split())})") from e


def _free(value: Any, key: str) -> Any:
    """A free-form value (``dict`` / ``Any`` fields): text is read by YAML's own rules."""
    if isinstance(value, _Text):
        try:
            return yaml.safe_load(str(value))
        except yaml.YAMLError as e:
            raise ConfigError(f"config key {key!r}: {str(value)!r} is not valid YAML") from e
    if isinstance(value, Mapping):
        return {_free(k, key): _free(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_free(v, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def _scalar(value: Any, tp: type, key: str) -> Any:
    if isinstance(value, _Text):
        text = str(value)
        if tp is str:
            if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
                return text[1:-1]
            if text.strip().lower() in _YAML_WORDS:
                why = "; YAML reads it as a bool or null: quote it (e.g. '\"no\"') to mean the word"
                raise _wrong(key, tp, value, why)
            return text
        try:
            if tp is bool:
                return _BOOLS[text.strip().lower()]
            return tp(text)  # int("010") is 10; float("1e-3") is 0.001
        except (KeyError, ValueError):
            raise _wrong(key, tp, value) from None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, tp) and (tp is bool or not isinstance(value, bool)):
        return str(value) if tp is str else value
    raise _wrong(key, tp, value)


def _sequence(value: Any, tp: Any, key: str) -> tuple:
    args = typing.get_args(tp)
    if isinstance(value, _Text):
        text = value.strip()
        if text.startswith("["):
            value = _load_text(text, key)
        else:
            value = [_Text(item.strip()) for item in text.split(",")] if text else []
    if not isinstance(value, (list, tuple)):
        raise _wrong(key, tp, value)
    if typing.get_origin(tp) is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise _wrong(key, tp, value, f" ({len(value)} items, {len(args)} expected)")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    item_tp = args[0] if args else Any
    return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as the annotation ``tp`` reads it (module docstring), else :class:`ConfigError`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return _free(value, key)
    if origin in (Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, _Text) and value.strip().lower() in _NULLS)):
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _coerce(value, arg, key)
                except ConfigError:
                    pass
        raise _wrong(key, tp, value)
    if origin is Literal:
        for choice in args:
            try:
                read = _scalar(value, type(choice), key)
            except ConfigError:
                continue
            if type(read) is type(choice) and read == choice:
                return choice
        raise _wrong(key, tp, value)
    if origin in (tuple, list) or tp in (tuple, list):
        return _sequence(value, tp, key)
    if origin is dict or tp is dict:
        value = _free(value, key)
        if not isinstance(value, Mapping):
            raise _wrong(key, tp, value)
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, _Text) and value.strip().startswith("{"):
            value = _load_text(value, key)
        if not isinstance(value, Mapping):
            first = dataclasses.fields(tp)[0].name
            raise _wrong(key, tp, value, f"; set its keys one by one, e.g. --{key}.{first}=...")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp in _SCALARS:
        return _scalar(value, tp, key)
    raise ConfigError(f"config key {key!r}: unsupported annotation {tp}")


def _variant(cls: type, data: Mapping[str, Any], prefix: str) -> tuple[type, str]:
    """The dataclass a section with ``config_variants()`` is read as, and what to add to an
    unknown key's message (which variant was read, and which others own the key)."""
    key, variants = cls.config_variants()
    if key in data:
        value = _coerce(data[key], str, prefix + key)
    else:
        value = next(f.default for f in dataclasses.fields(cls) if f.name == key)
    shown = f"{prefix}{key}={value}"
    if value not in variants:
        section = prefix.rstrip(".") or "section"
        raise ConfigError(
            f"config key {prefix + key!r}: no {section} named {value!r}; known: {', '.join(sorted(variants))}"
        )
    chosen = variants[value]
    if not issubclass(chosen, cls):
        raise ConfigError(f"config key {prefix + key!r}: {value!r} cannot be read as a {cls.__name__}")
    return chosen, shown


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from a plain mapping, refusing unknown keys and values of the wrong type."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config {prefix.rstrip('.') or 'root'} must be a mapping, got {data!r}")
    chosen = ""
    if hasattr(cls, "config_variants"):
        cls, chosen = _variant(cls, data, prefix)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = str(key)
        if name not in fields:
            note = ""
            if chosen:
                key_of_variant, variants = cls.config_variants()
                owners = sorted(v for v, c in variants.items() if name in {f.name for f in dataclasses.fields(c)})
                owned = f" (a key of {prefix}{key_of_variant}={' or '.join(owners)})" if owners else ""
                note = f" with {chosen}{owned}"
            raise _unknown_key(name, list(fields), prefix, note)
        kwargs[name] = _coerce(value, hints[name], prefix + name)
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


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``key=value`` / ``--key=value`` strings (dotted keys) to a nested dict copy.

    Each value is left as text for :func:`from_dict` to read as its field's type.
    """
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
        node[parts[-1]] = _Text(raw)
    return out


def read_yaml(path: str) -> dict:
    """A config file's mapping (local or ``s3://``), plain scalars left for the fields to read."""
    from rayhash import storage

    try:
        text = storage.read_text(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path!r}: {' '.join(str(e).split())}") from e
    try:
        data = yaml.load(text, _Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path!r} is not valid YAML: {' '.join(str(e).split())}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a config file must be a mapping")
    return data


def load(cls: type[T], path: str | None = None, overrides: Sequence[str] = ()) -> T:
    """Load ``cls`` from a YAML file (local or ``s3://``) and apply overrides."""
    return from_dict(cls, apply_overrides(read_yaml(path) if path else {}, overrides))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def replace(cfg: T, **changes: Any) -> T:
    return dataclasses.replace(cfg, **changes)
