"""The experiments of the research plan, in one place: sweeps name one, reports judge its hypothesis by it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError
from .verdicts import data_scaling_hypothesis, online_hypothesis, optimizers_hypothesis, replay_hypothesis


@dataclass(frozen=True)
class Experiment:
    name: str
    question: str
    hypothesis: Callable[[list[dict], object], dict] | None  # (run figures, criteria) -> statement + verdicts


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment("optimizers", "GaLore vs AdamW vs LoRA on the same stream", optimizers_hypothesis),
    Experiment("data_scaling", "learning and forgetting against the amount of conversation data",
               data_scaling_hypothesis),
    Experiment("online", "streaming at batch 1-2: adaptation to new topics", online_hypothesis),
    Experiment("replay", "replay ratios 0 / 10 / 20% against forgetting", replay_hypothesis),
    Experiment("custom", "any set of runs: the success criteria only", None),
]}


def experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ConfigError("experiment", f"must be one of {', '.join(EXPERIMENTS)}; got {name!r}")
    return EXPERIMENTS[name]
