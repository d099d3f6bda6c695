"""The run config: one YAML file describes a run. Every key is documented next to it.

Sections follow the flow: model -> data -> render (config/data.py) -> method, train, replay (config/training.py)
-> eval (config/evaluation.py) -> logging (here) -> learn (config/learn.py, the online learner). `convlearn config
docs` renders them into docs/CONFIG.md.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import ConfigError, UserError
from .data import DataConfig, ModelConfig, RenderConfig
from .evaluation import EvalConfig
from .learn import LearnConfig
from .schema import apply_override, build, opt, parse_override, render_docs, section, to_dict
from .training import MethodConfig, ReplayConfig, TrainConfig


@section
class LoggingConfig:
    tensorboard: bool = opt(True, "Write TensorBoard events to <output_dir>/tb.")
    wandb: bool = opt(False, "Log to Weights & Biases (pip install convlearn[wandb]).")
    wandb_project: str = opt("convlearn", "W&B project.")
    wandb_mode: Literal["offline", "online"] = opt("offline", "offline works with no network; sync later.")
    progress: bool = opt(True, "Progress bar (step, loss, tokens/s, ETA).")


@section
class RunConfig:
    model: ModelConfig = opt(ModelConfig(), "The model to train.")
    data: DataConfig = opt(DataConfig(), "Training data.")
    render: RenderConfig = opt(RenderConfig(), "How conversations become token ids and loss masks.")
    method: MethodConfig = opt(MethodConfig(), "The training method and its settings.")
    train: TrainConfig = opt(TrainConfig(), "The training loop.")
    replay: ReplayConfig = opt(ReplayConfig(), "Replay against forgetting.")
    eval: EvalConfig = opt(EvalConfig(), "What is evaluated when: learning and forgetting.")
    logging: LoggingConfig = opt(LoggingConfig(), "Where metrics go.")
    learn: LearnConfig = opt(LearnConfig(), "The online learner (`convlearn learn`); ignored by other commands.")
    seed: int = opt(0, "Seed for data order and initialisation.", ge=0)
    output_dir: str = opt("runs/default", "Run directory: resolved config, metrics, evals, checkpoints.")



def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                require: tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config, apply `key.path=value` overrides, validate. Errors name the key. `require`: keys
    (like `model.name`) the file or the overrides must set, rather than take a default silently."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(str(p), f"not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(str(p), f"not valid YAML{where}") from None
        if not isinstance(data, dict):
            raise ConfigError(str(p), "the top level must be a mapping of sections")
    # Overrides apply to the defaults merged with the file, so `--set data.sources.0.limit=5` works
    # whether or not the file spells out data.sources.
    merged = _deep_merge(to_dict(RunConfig()), data)
    set_keys = set()
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(merged, parts, value)
        set_keys.add(".".join(map(str, parts)))
    cfg = build(RunConfig, merged)
    for key in require:
        section, _, name = key.partition(".")
        if key not in set_keys and name not in (data.get(section) or {}):
            raise ConfigError(key, "is required" + (f" ({path} does not set it)" if path else ""))
    return cfg


def _deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _deep_merge(base[k], v) if k in base else v
        return out
    return over


def dump_config(cfg: RunConfig) -> str:
    """The config as YAML, as written beside a run or a serve directory: a store URL's password is never in it
    (give it to libpq through PGPASSWORD or ~/.pgpass instead)."""
    values = to_dict(cfg)
    store = (values.get("learn") or {}).get("store")
    if store:
        values["learn"]["store"] = re.sub(r"^([a-z0-9+]+://[^:/@]*):[^@]*@", r"\1:***@", store)
    return yaml.safe_dump(values, sort_keys=False)


def config_docs() -> str:
    return render_docs(RunConfig, "convlearn run config")
