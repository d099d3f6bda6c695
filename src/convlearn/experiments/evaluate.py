"""`convlearn eval RUN_DIR|MODEL`: the evaluation suites on a saved checkpoint or any model, with the same code
the training loop runs on the live model."""
from __future__ import annotations

from pathlib import Path

from ..config import load_config
from ..errors import UserError


def _load_checkpoint_model(cfg, ckpt: Path):
    from ..models import load_model
    kwargs = dict(dtype=cfg.model.dtype, device=cfg.model.device, attn_implementation=cfg.model.attn_implementation,
                  trust_remote_code=cfg.model.trust_remote_code)
    if (ckpt / "model" / "adapter_config.json").is_file():  # LoRA: the base model plus the saved adapter
        from peft import PeftModel
        base = load_model(cfg.model.name, revision=cfg.model.revision, **kwargs)
        return PeftModel.from_pretrained(base, str(ckpt / "model"))
    return load_model(str(ckpt / "model"), **kwargs)


def evaluate(target: str, suite: str = "full", step: int | None = None, config: str | None = None,
             overrides: list[str] | tuple[str, ...] = (), out: str | None = None) -> dict:
    from ..data.prepare import prepare
    from ..eval.forgetting import write_analysis
    from ..eval.suites import RunEvaluator, headline
    from ..models import load_model, load_tokenizer, model_spec
    run_dir = Path(target)
    is_run = (run_dir / "config.yaml").is_file()
    if is_run:
        cfg = load_config(config or run_dir / "config.yaml", overrides)
        ckpts = run_dir / "checkpoints"
        if step is None:
            from ..train.checkpoint import latest_checkpoint
            ckpt = latest_checkpoint(run_dir)
            if ckpt is None:
                raise UserError(f"{run_dir}: no complete checkpoint to evaluate")
        else:
            ckpt = ckpts / f"step-{step:08d}"
            if not (ckpt / "COMPLETE").is_file():
                have = sorted(p.name for p in ckpts.glob("step-*")) if ckpts.is_dir() else []
                raise UserError(f"{run_dir}: no complete checkpoint for step {step} (have: {', '.join(have)})")
        step = int(ckpt.name.split("-")[1])
        out_dir = Path(out) if out else run_dir
    else:
        cfg = load_config(config, [*overrides, f"model.name={target}"])
        step = step or 0
        out_dir = Path(out or f"runs/eval-{Path(target).name}")
    if suite not in cfg.eval.suites:
        raise UserError(f"--suite: unknown suite {suite!r} (eval.suites: {', '.join(cfg.eval.suites)})")
    tok = load_tokenizer(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    spec = model_spec(cfg.model.name, cfg.model.revision)
    prepared = prepare(cfg, tok, spec, progress=cfg.logging.progress)
    model = _load_checkpoint_model(cfg, ckpt) if is_run else load_model(
        target, revision=cfg.model.revision, dtype=cfg.model.dtype, device=cfg.model.device,
        attn_implementation=cfg.model.attn_implementation, trust_remote_code=cfg.model.trust_remote_code)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    record = RunEvaluator(cfg, tok, spec, prepared, out_dir, suites={suite}).run(model, step, suite)
    result = {"step": step, "suite": suite, "file": str(out_dir / "evals" / f"step-{step}.json"),
              "headline": headline(record), "seconds": record["seconds"]}
    if is_run and not out:
        result["forgetting"] = write_analysis(out_dir, cfg.eval).get("flags", {})
    return result
