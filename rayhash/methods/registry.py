"""Method registry: a name -> (config dataclass, method class), built by :func:`build_method`.

``method.name`` in a training config picks an entry; the rest of the ``method`` section is read as
that entry's dataclass, so a key of another method is refused (:mod:`rayhash.config`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rayhash.methods.base import CODE_KINDS, INPUTS, SHARD_INPUTS, VIEW_INPUTS, HashingMethod, MethodConfig


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config_cls: type[MethodConfig]
    method_cls: type[HashingMethod]

    @property
    def code_kind(self) -> str:
        return self.method_cls.code_kind


_REGISTRY: dict[str, MethodEntry] = {}


def register_method(name: str, config_cls: type[MethodConfig], method_cls: type[HashingMethod]) -> MethodEntry:
    """Register ``method_cls`` under ``name``; ``config_cls`` subclasses MethodConfig with ``name`` defaulting to it."""
    if not (dataclasses.is_dataclass(config_cls) and issubclass(config_cls, MethodConfig)):
        raise TypeError(f"method {name!r}: its config must be a dataclass subclassing MethodConfig")
    if config_cls().name != name:
        raise ValueError(f"method {name!r}: {config_cls.__name__}.name must default to {name!r}")
    if not issubclass(method_cls, HashingMethod):
        raise TypeError(f"method {name!r}: {method_cls.__name__} must subclass HashingMethod")
    for attr, allowed in (("e_step_inputs", SHARD_INPUTS), ("loss_inputs", VIEW_INPUTS)):
        unknown = set(getattr(method_cls, attr)) - set(allowed)
        if unknown:
            raise ValueError(f"method {name!r}: {attr} {sorted(unknown)} not among {list(allowed)}")
    if method_cls.code_kind not in CODE_KINDS:
        raise ValueError(f"method {name!r}: code_kind {method_cls.code_kind!r} not among {list(CODE_KINDS)}")
    entry = MethodEntry(name, config_cls, method_cls)
    _REGISTRY[name] = entry
    return entry


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def method_entry(name: str) -> MethodEntry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(list_methods())}")
    return _REGISTRY[name]


def config_classes() -> dict[str, type[MethodConfig]]:
    """Each registered name's config dataclass."""
    return {name: entry.config_cls for name, entry in _REGISTRY.items()}


def build_method(cfg: MethodConfig, nbits: int, feature_dim: int = 0, input_dim: int = 0) -> HashingMethod:
    """The method ``cfg.name`` names, for codes of ``nbits`` from features of ``feature_dim``.

    ``input_dim`` (a model input's flattened width) goes only to a method that declares ``"inputs"``
    in its ``loss_inputs``, so the constructors of methods that never see an input stay as they are.
    """
    entry = method_entry(cfg.name)
    if not isinstance(cfg, entry.config_cls):
        raise TypeError(f"method {cfg.name!r} takes a {entry.config_cls.__name__}, got a {type(cfg).__name__}")
    if INPUTS in entry.method_cls.loss_inputs:
        return entry.method_cls(cfg, nbits, feature_dim, input_dim=input_dim)
    return entry.method_cls(cfg, nbits, feature_dim)
