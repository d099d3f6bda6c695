"""The learning-rate stage of a sweep: every method gets its own tuned rate before methods are compared.

Without it a comparison is decided by the configs: at one shared rate GaLore's update (scale 0.25, low-rank) is
several times smaller than AdamW's, so "GaLore learns less and forgets less" would be true by construction.

    lr_search: {factors: [0.25, 0.5, 1, 2, 4], steps: 300}   # in a sweep file: a pilot per point and factor
    lr_from: runs/optimizers/lr_choice.json                  # other sweeps: use the rates experiment 1 picked

A pilot is the point's run with `train.lr` = its configured rate x a factor, cut to `steps` steps, evaluated once
at its end on the conversation perplexity (assistant tokens) of a validation slice carved from the training side
(`data.evaluate_on: validation`): the pilot neither trains on it nor reads the report's test set, so selection
never sees the conversations the report judges. The lowest wins; `lr_choice.json` in the sweep's root keeps every
pilot's figure (the sensitivity curve), its retention (original-text perplexity and the retention benchmark,
where the run evaluates them: the rate that learns most may be the one that forgets most) and the pick, keyed by
method label, so the other experiments can take the same rates (`lr_from`). Pilots run one after another in the
sweep's process.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..config import load_config
from ..errors import ConfigError, UserError
from ..eval.records import load_evals
from ..train.loop import RunStopped
from ..train.methods import method_for
from .run import run_training

PILOT_SUITE = "lr_pilot"


@dataclass
class LRSearch:
    factors: list[float]
    steps: int

    @classmethod
    def parse(cls, spec) -> "LRSearch":
        if not isinstance(spec, dict) or set(spec) - {"factors", "steps"}:
            raise ConfigError("lr_search", "must be a mapping {factors: [...], steps: N}")
        factors, steps = spec.get("factors", [0.25, 0.5, 1, 2, 4]), spec.get("steps", 300)
        if not isinstance(factors, list) or not factors or not all(
                isinstance(f, (int, float)) and f > 0 for f in factors):
            raise ConfigError("lr_search.factors", "must be a non-empty list of positive numbers")
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError("lr_search.steps", f"must be a positive integer; got {steps!r}")
        return cls([float(f) for f in factors], steps)


def _pilot_overrides(steps: int, cfg) -> list[str]:
    """Cut to `steps`, scored once at the end on the validation slice, with the run's retention evaluations."""
    suite = ["conversation_ppl"] + (["original_ppl"] if cfg.eval.original is not None else []) \
        + (["benchmarks"] if cfg.eval.benchmarks else [])
    return [f"train.max_steps={steps}", "train.save_every=0", "eval.schedule=[]", "data.evaluate_on=validation",
            f"eval.final_suite={PILOT_SUITE}", f"eval.suites.{PILOT_SUITE}=[{', '.join(suite)}]",
            "logging.tensorboard=false", "logging.progress=false"]


def pilots(sweep, search: LRSearch) -> list[dict]:
    """One pilot per method (the first run with its label) and factor: {point, label, lr, name, overrides}.
    Points that differ in something other than the method (replay ratio, data size, seed) share its rate."""
    out, seen = [], set()
    for run in sweep.runs:
        point = run.name.rsplit("-s", 1)[0] if run.point.get("seed") is not None else run.name
        cfg = load_config(sweep.base, run.overrides)
        label = method_for(cfg.method, cfg.train).label
        if label in seen:
            continue
        seen.add(label)
        for f in search.factors:
            lr = cfg.train.lr * f
            out.append({"point": point, "label": label, "lr": lr, "name": f"{point}-lr{lr:.3g}",
                        "overrides": [*run.overrides, f"train.lr={lr!r}", *_pilot_overrides(search.steps, cfg)]})
    return out


def _pilot_figures(out: Path, benchmark: str) -> dict:
    """The pilot's validation conversation perplexity at its end (assistant tokens; all tokens where the data
    has no assistant tokens; inf for a pilot that diverged or never evaluated) and its retention figures."""
    evals = load_evals(out)
    if not evals:
        return {"ppl": math.inf, "original_ppl": None, "retention": None}
    last = evals[-1]
    fig = last.perplexity("conversation_ppl", "assistant") or last.perplexity("conversation_ppl", "all")
    orig = last.perplexity("original_ppl")
    return {"ppl": fig.ppl if fig is not None and math.isfinite(fig.ppl) else math.inf,
            "original_ppl": orig.ppl if orig is not None else None, "retention": last.retention(benchmark)[0]}


def run_pilots(sweep, search: LRSearch, root: Path) -> dict:
    """Run (or find finished) pilots and pick each point's rate; writes root/lr_choice.json."""
    results: dict[str, dict] = {}
    for p in pilots(sweep, search):
        out = root / "lr-search" / p["name"]
        if not (out / "summary.json").is_file():
            print(f"[lr-search] {p['name']}", flush=True)
            try:
                run_training(load_config(sweep.base, p["overrides"]), out, resume=(out / "checkpoints").is_dir())
            except RunStopped as e:  # diverged at this rate: that is its result
                print(f"[lr-search] {p['name']}: {e}", flush=True)
        cfg = load_config(sweep.base, p["overrides"])
        entry = results.setdefault(p["label"], {"point": p["point"], "curve": []})
        entry["curve"].append({"lr": p["lr"], **_pilot_figures(out, cfg.eval.criteria.retention_benchmark),
                               "run": str(out)})
    for entry in results.values():
        finite = [c for c in entry["curve"] if math.isfinite(c["ppl"])]
        if not finite:
            raise UserError(f"lr_search: every pilot of {entry['point']} diverged; lower its train.lr")
        best = min(finite, key=lambda c: c["ppl"])
        entry["lr"] = best["lr"]
        entry["edge"] = best["lr"] in (min(c["lr"] for c in entry["curve"]), max(c["lr"] for c in entry["curve"]))
    choice = {"steps": search.steps, "factors": search.factors,
              "metric": "validation conversation_ppl (assistant tokens)",
              "methods": results, "by_label": {label: e["lr"] for label, e in results.items()}}
    (root / "lr_choice.json").write_text(json.dumps(choice, indent=2, default=str))
    return choice


def lr_from(path: str | Path, label: str) -> float:
    """The rate an earlier search picked for a method label (`lr_from:` in a sweep file)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("lr_from", f"no such file {p}: run the experiment with lr_search first")
    by_label = json.loads(p.read_text())["by_label"]
    if label not in by_label:
        raise ConfigError("lr_from", f"{p} has no rate for {label!r} (it has: {', '.join(by_label)})")
    return by_label[label]
