"""`convlearn export RUN --out DIR`: a clean model folder for deployment, from one verified checkpoint.

The folder holds what serving needs and nothing of training (no optimizer or trainer state): the weights (or the
LoRA adapter and the base it names; `--merge` folds it in), config, tokenizer and chat template, a generation
config that stops at the family's end of turn, and a model card (README.md, the Hugging Face convention) saying
what it is: base model, method, data and conversation counts, steps, the evaluation figures at that step with
their change from step 0, and the run's config. A checkpoint that fails verification is refused. `--best` picks
the checkpoint by a figure of `evals/` (among steps that have both a checkpoint and an evaluation), keeping only
those whose retention stayed inside the run's bound.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch
import yaml

from ..config import RunConfig, dump_config, load_config
from ..errors import UserError
from ..eval.records import EvalRecord, load_evals
from ..models import load_from_config, load_tokenizer, model_spec, resolve_device
from ..precision import resolve_precision
from ..train import model_folder
from ..train.checkpoint import MODEL_DIR, checkpoint_path, complete_checkpoints, damage, step_of, usable_checkpoint
from ..train.methods import method_for

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
TRAINING_ONLY = {"trainer_state.pt", "COMPLETE"}


def export(run: str | Path, out: str | Path, step: int | None = None, best: str | None = None,
           merge: bool = False, dtype: str | None = None) -> dict:
    run_dir, out = Path(run), Path(out)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml)")
    if step is not None and best is not None:
        raise UserError("export: --step and --best pick the checkpoint two ways; give one")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: exists and is not empty; export writes a new folder")
    cfg = load_config(run_dir / "config.yaml")
    method = method_for(cfg.method)
    evals = {e.step: e for e in load_evals(run_dir)}
    ckpt = _pick(run_dir, step, best, evals, cfg)
    why = damage(ckpt)
    if why is not None:
        raise UserError(f"{ckpt}: fails verification ({why}); not exported")
    source = ckpt / MODEL_DIR
    tokenizer = load_tokenizer(str(source)) if (source / "tokenizer_config.json").is_file() else \
        load_tokenizer(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    spec = model_spec(cfg.model.name, cfg.model.revision)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    adapter = model_folder.is_adapter(source)
    if adapter and merge or (not adapter and dtype is not None):
        # in the dtype the run kept its weights in (a LoRA merge in fp32 unless the run was pure bf16)
        prec = resolve_precision(cfg.train.precision, resolve_device(cfg.model.device))
        model = method.load_trained(source, lambda name: load_from_config(cfg.model, weights=None if name ==
                                                                          cfg.model.name else name, precision=prec),
                                    cfg.model.name)
        if adapter:
            model = model.merge_and_unload()
        if dtype is not None:
            model = model.to(DTYPES[dtype])
        model.save_pretrained(tmp)
        base = None
    else:
        for f in source.iterdir():
            if f.is_file() and f.name not in TRAINING_ONLY:
                shutil.copy2(f, tmp / f.name)
        base = model_folder.base_of(source) if adapter else None
    model_folder.complete(tmp, tokenizer, spec, base)
    step_done = step_of(ckpt)
    (tmp / "README.md").write_text(model_card(run_dir, cfg, method, step_done, evals, adapter and not merge, base))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return {"out": str(out), "checkpoint": str(ckpt), "step": step_done, "merged": adapter and merge,
            "adapter": adapter and not merge, "dtype": dtype or "as trained"}


def _pick(run_dir: Path, step: int | None, best: str | None, evals: dict[int, EvalRecord], cfg: RunConfig) -> Path:
    if step is not None:
        ckpt = checkpoint_path(run_dir, step)
        if ckpt not in complete_checkpoints(run_dir):
            have = ", ".join(p.name for p in complete_checkpoints(run_dir))
            raise UserError(f"{run_dir}: no complete checkpoint for step {step} (have: {have})")
        return ckpt
    if best is None:
        ckpt = usable_checkpoint(run_dir)
        if ckpt is None:
            raise UserError(f"{run_dir}: no intact checkpoint to export")
        return ckpt
    return best_checkpoint(run_dir, best, evals, cfg.eval.criteria)


def best_checkpoint(run_dir: Path, metric: str, evals: dict[int, EvalRecord], criteria) -> Path:
    """The checkpoint whose evaluation at its step is best by `metric` (a headline key such as
    `conversation_ppl/assistant`: lower is better for perplexities and bits per byte, higher for the rest),
    among those whose retention benchmark stayed within criteria.retention_points of step 0."""
    lower = "ppl" in metric or "bits_per_byte" in metric
    base = evals.get(0)
    base_retention = base.retention(criteria.retention_benchmark)[0] if base else None
    scored, excluded = [], []
    for ckpt in complete_checkpoints(run_dir):
        record = evals.get(step_of(ckpt))
        value = record.headline().get(metric) if record else None
        if value is None or not math.isfinite(value):
            continue
        retention = record.retention(criteria.retention_benchmark)[0]
        if base_retention is not None and retention is not None and \
                100 * (base_retention - retention) > criteria.retention_points:
            excluded.append(ckpt.name)
            continue
        scored.append((value if lower else -value, ckpt))
    if not scored:
        known = sorted({k for e in evals.values() for k in e.headline()})
        raise UserError(f"--best {metric}: no checkpoint has it at its step inside the retention bound"
                        + (f" (out of bound: {', '.join(excluded)})" if excluded else "")
                        + f"; figures evaluated: {', '.join(known) or 'none'}")
    return min(scored, key=lambda t: t[0])[1]


def model_card(run_dir: Path, cfg: RunConfig, method, step: int, evals: dict[int, EvalRecord], adapter: bool,
               base: str | None) -> str:
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    data = summary.get("data", {})
    front = {"base_model": cfg.model.name, "library_name": "peft" if adapter else "transformers",
             "tags": ["convlearn", "continual-learning", method.name], "pipeline_tag": "text-generation"}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {run_dir.name} (step {step})", "",
             f"`{cfg.model.name}` continually trained on conversations with **{method.label}** by convlearn, "
             f"{step} optimizer steps" + (f" of {summary['steps']}" if summary.get("steps") else "") + ".",
             "" if not adapter else f"\nA LoRA adapter: it loads on its base, `{base}`, with "
                                    "`AutoPeftModelForCausalLM.from_pretrained(this folder)`.", "",
             "## Training", "",
             f"- method: {method.label}, learning rate {cfg.train.lr:g}, precision "
             f"{summary.get('precision', cfg.train.precision)}, batch {cfg.train.batch_size} x {cfg.train.grad_accum}",
             "- data: " + ", ".join(f"`{s.path}`" for s in cfg.data.sources)
             + (f"; {data.get('conversations', 0):,} conversations kept ({data.get('heldout', 0):,} held out for "
                f"evaluation), {sum(data.get('skipped', {}).values()):,} skipped" if data else ""),
             f"- tokens trained on: {summary['tokens']:,}" if summary.get("tokens") else "- tokens: see the run",
             ""]
    record, first = evals.get(step), evals.get(0)
    if record is not None:
        now, then = record.headline(), first.headline() if first else {}
        lines += [f"## Evaluation at step {step}", "", "| figure | at this step | step 0 | change |",
                  "|---|---:|---:|---:|"]
        for key, value in now.items():
            before = then.get(key)
            change = f"{value - before:+.4g}" if before is not None else "–"
            lines.append(f"| {key} | {value:.4g} | {before:.4g} | {change} |" if before is not None else
                         f"| {key} | {value:.4g} | – | – |")
        lines.append("")
    else:
        lines += [f"No evaluation ran at step {step} (see `{run_dir}/evals/`).", ""]
    auto = "AutoPeftModelForCausalLM" if adapter else "AutoModelForCausalLM"
    lines += ["## Use", "", "```python", "from transformers import AutoTokenizer",
              f"from {'peft' if adapter else 'transformers'} import {auto}",
              f'path = "{run_dir.name}-step-{step}"  # this folder',
              f'tok, model = AutoTokenizer.from_pretrained(path), {auto}.from_pretrained(path)',
              'chat = tok.apply_chat_template([{"role": "user", "content": "Hello!"}], add_generation_prompt=True, '
              'return_tensors="pt", return_dict=True)',
              'print(tok.decode(model.generate(**chat, max_new_tokens=64)[0, chat["input_ids"].shape[1]:], '
              'skip_special_tokens=True))',
              "```", "", "## Run config", "", "```yaml", dump_config(cfg).strip(), "```", ""]
    return "\n".join(lines)
