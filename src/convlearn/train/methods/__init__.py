"""The training methods: one module each in this package. A module registers its `Method` subclass with
`@register`; every module here is imported when the package is, so adding a method is adding a file (and its
tests). docs/ARCHITECTURE.md lists what such a file holds."""
from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from ...errors import ConfigError
from .base import Method, Trainable

if TYPE_CHECKING:
    from ...config import MethodConfig, RunConfig, TrainConfig

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name in _REGISTRY:
        raise RuntimeError(f"two methods are named {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return list(_REGISTRY)


def method_classes() -> list[type[Method]]:
    return list(_REGISTRY.values())


def method_for(method_cfg: MethodConfig, train_cfg: TrainConfig | None = None) -> Method:
    """The method a `method` config section names, with its keys (and, given the `train` section, their
    combinations with it) checked: ConfigError names the key."""
    cls = _REGISTRY.get(method_cfg.name)
    if cls is None:
        raise ConfigError("method.name", f"unknown method {method_cfg.name!r} (known: {', '.join(_REGISTRY)})")
    method = cls(method_cfg)
    method.check(train_cfg)
    return method


def build_method(model, cfg: RunConfig, spec, device: str, seed: int = 0) -> Trainable:
    """The trainable of a run config's method on `model` (targets: the config's, else the model family's)."""
    targets = cfg.method.target_modules or list(spec.facts.target_modules)
    return method_for(cfg.method, cfg.train).build(model, cfg.train, targets, device, seed)


def count_memory(model, method_cfg: MethodConfig, targets, precision: str = "fp32"):
    """Weights, gradients at peak and optimizer state of the method a config section names, in bytes, on
    `model` built in the weight dtype of `precision` (precision.py)."""
    return method_for(method_cfg).count_memory(model, targets, precision)


def methods_docs() -> str:
    """The Methods section of docs/CONFIG.md: every registered method, what it is and the keys it reads."""
    rows = [f"| `{m.name}` | {m.summary} | {', '.join(f'`method.{k}`' for k in m.keys) or '–'} |"
            for m in _REGISTRY.values()]
    return ("\n## Methods\n\nThe values of `method.name`: one module each in `src/convlearn/train/methods/`.\n\n"
            "| name | what it is | keys it reads |\n|---|---|---|\n" + "\n".join(rows) + "\n")


for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Method", "Trainable", "build_method", "count_memory", "method_classes", "method_for", "method_names",
           "methods_docs", "register"]
