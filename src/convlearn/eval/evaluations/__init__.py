"""The evaluations: one module (or a few closely related ones) per file in this package. A module registers its
`Evaluation` subclass with `@register_evaluation`; every module here is imported when the package is, so adding
an evaluation is adding a file (and its test). docs/ARCHITECTURE.md lists what such a file holds."""
from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from ...errors import ConfigError
from .base import EvalContext, Evaluation

if TYPE_CHECKING:
    from ...config import EvalConfig

_REGISTRY: dict[str, type[Evaluation]] = {}


def register_evaluation(cls: type[Evaluation]) -> type[Evaluation]:
    if cls.name in _REGISTRY:
        raise RuntimeError(f"two evaluations are named {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def evaluation_names() -> list[str]:
    return list(_REGISTRY)


def evaluation_for(name: str) -> Evaluation:
    """The evaluation an item of eval.suites names (the names were checked by `check_suites`)."""
    return _REGISTRY[name]()


def check_suites(eval_cfg: EvalConfig, path: str = "eval") -> None:
    """ConfigError naming `eval.suites.<name>` for an item that is not a registered evaluation, or one whose
    inputs the `eval` section does not give (Evaluation.check). config/ cannot
    see this registry (eval imports config, not the other way), so whatever builds an evaluator, or starts a run
    that will, calls this before any work."""
    for name, items in eval_cfg.suites.items():
        for item in items:
            if item not in _REGISTRY:
                raise ConfigError(f"{path}.suites.{name}", f"unknown evaluation {item!r} (known: "
                                                           f"{', '.join(_REGISTRY)})")
            lacking = _REGISTRY[item]().check(eval_cfg)
            if lacking:  # fails now, not at the run's step-0 evaluation after an LR search
                raise ConfigError(f"{path}.suites.{name}", f"{item} {lacking}")


def evaluations_docs() -> str:
    """The Evaluations section of docs/CONFIG.md: every registered evaluation and what it measures."""
    rows = [f"| `{e.name}` | {e.summary} |" for e in _REGISTRY.values()]
    return ("\n## Evaluations\n\nThe items of `eval.suites`: one module each (or a few related ones) in "
            "`src/convlearn/eval/evaluations/`.\n\n| name | what it measures |\n|---|---|\n" + "\n".join(rows)
            + "\n")


for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["EvalContext", "Evaluation", "check_suites", "evaluation_for", "evaluation_names", "evaluations_docs",
           "register_evaluation"]
