"""`convlearn eval RUN_DIR|MODEL`: the evaluation suites on a saved checkpoint or any model, with the same code
the training loop runs on the live model, under the same precision (the run's `train.precision` on this device:
weights in its dtype, computed under its autocast), so a checkpoint scores here what it scored in its run."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from ..config import ModelConfig, load_config
from ..data.prepare import prepare
from ..errors import UserError
from ..eval.evaluations import check_suites
from ..eval.forgetting import write_analysis
from ..eval.suites import RunEvaluator, headline
from ..models import load_from_config, load_tokenizer, model_spec, resolve_device
from ..precision import Precision, resolve_precision
from ..train.checkpoint import (
    MODEL_DIR,
    checkpoint_path,
    complete_checkpoints,
    damage,
    is_complete,
    step_of,
    usable_checkpoint,
)
from ..train.methods import method_for


def _checkpoint(run_dir: Path, step: int | None) -> Path:
    if step is None:
        ckpt = usable_checkpoint(run_dir)
        if ckpt is None:
            raise UserError(f"{run_dir}: no intact checkpoint to evaluate")
        return ckpt
    ckpt = checkpoint_path(run_dir, step)
    if not is_complete(ckpt):
        have = [p.name for p in complete_checkpoints(run_dir)]
        raise UserError(f"{run_dir}: no complete checkpoint for step {step} (have: {', '.join(have)})")
    why = damage(ckpt)
    if why is not None:
        raise UserError(f"{ckpt}: damaged ({why})")
    return ckpt


def evaluate(target: str, suite: str = "full", step: int | None = None, config: str | None = None,
             overrides: list[str] | tuple[str, ...] = (), out: str | None = None) -> dict:
    run_dir = Path(target)
    is_run = (run_dir / "config.yaml").is_file()
    if is_run:
        cfg = load_config(config or run_dir / "config.yaml", overrides)
        ckpt = _checkpoint(run_dir, step)
        step = step_of(ckpt)
        out_dir = Path(out) if out else run_dir
    else:
        cfg = load_config(config, [*overrides, f"model.name={target}"])
        step = step or 0
        out_dir = Path(out or f"runs/eval-{Path(target).name}")
    if suite not in cfg.eval.suites:
        raise UserError(f"--suite: unknown suite {suite!r} (eval.suites: {', '.join(cfg.eval.suites)})")
    check_suites(cfg.eval)  # before the data is prepared and the model loaded
    tok = load_tokenizer(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    spec = model_spec(cfg.model.name, cfg.model.revision)
    prepared = prepare(cfg, tok, spec, progress=cfg.logging.progress)
    prec = resolve_precision(cfg.train.precision, resolve_device(cfg.model.device))
    load_base = partial(_load_weights, cfg.model, prec)
    model = method_for(cfg.method).load_trained(ckpt / MODEL_DIR, load_base, cfg.model.name) if is_run \
        else load_from_config(cfg.model, precision=prec)
    prec.hold_frozen(model)  # what the run did not train is held as training held it (bf16 in bf16-mixed)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluator = RunEvaluator.for_run(cfg, tok, spec, prepared, out_dir, suites={suite})
    with torch.no_grad(), prec.autocast():  # as the training loop runs its evaluations
        record = evaluator.run(model, step, suite)
    result = {"step": step, "suite": suite, "file": str(out_dir / "evals" / f"step-{step}.json"),
              "headline": headline(record), "seconds": record["seconds"]}
    if is_run and not out:
        result["forgetting"] = write_analysis(out_dir, cfg.eval).get("flags", {})
    return result


def _load_weights(model_cfg: ModelConfig, prec: Precision, name_or_path: str):
    return load_from_config(model_cfg, weights=None if name_or_path == model_cfg.name else name_or_path,
                            precision=prec)
