"""Forgetting analysis over a run's evaluation records: per figure the change from step 0 (absolute and
relative), the largest drop at any step, backward transfer across phases, and flags against thresholds."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .records import PERPLEXITIES, EvalRecord, load_evals

if TYPE_CHECKING:
    from ..config import EvalConfig

Reader = Callable[[EvalRecord], float | None]


def _series_readers(record: EvalRecord) -> dict[str, tuple[Reader, bool]]:
    """figure name -> (how to read it from a record, higher is better), for the figures `record` has."""
    readers: dict[str, tuple[Reader, bool]] = {}
    for name in PERPLEXITIES:
        if record.perplexity(name) is not None:
            readers[f"{name}.loss"] = (lambda r, n=name: _attr(r.perplexity(n), "loss"), False)
            readers[f"{name}.bits_per_byte"] = (lambda r, n=name: _attr(r.perplexity(n), "bits_per_byte"), False)
    for kind, bench in record.benchmark_scores():
        readers[f"{kind}.{bench}"] = (lambda r, k=kind, b=bench: r.benchmark(b, k), True)
    if record.probe("ll_accuracy") is not None:
        readers["probes.ll_accuracy"] = (lambda r: r.probe("ll_accuracy"), True)
    if record.rouge_l() is not None:
        readers["quality.rougeL"] = (lambda r: r.rouge_l(), True)
    return readers


def _attr(obj, name: str):
    return getattr(obj, name) if obj is not None else None


def analyze(records: list[EvalRecord], eval_cfg: EvalConfig, phases: list[dict] | None = None) -> dict:
    records = [r if isinstance(r, EvalRecord) else EvalRecord.from_json(r) for r in records]
    if not records or records[0].step != 0:
        return {"skipped": "no step-0 evaluation to compare with"}
    base = records[0]
    out = {"steps": [r.step for r in records], "figures": {}, "flags": {}}
    for name, (read, higher_better) in _series_readers(base).items():
        series = [(r.step, read(r)) for r in records if read(r) is not None]
        v0, (last_step, v1) = series[0][1], series[-1]
        drop = lambda v: (v0 - v) if higher_better else (v - v0)  # noqa: E731 (positive = worse)
        worst = max(series, key=lambda sv: drop(sv[1]))
        out["figures"][name] = {"step0": v0, "final": v1, "final_step": last_step, "change": v1 - v0,
                                "relative_change": (v1 - v0) / v0 if v0 else None,
                                "max_drop": max(0.0, drop(worst[1])), "max_drop_step": worst[0],
                                "higher_is_better": higher_better, "series": series}
    c = eval_cfg.criteria
    keys = [f"benchmarks.{c.retention_benchmark}"] + (["mmlu_quick.mmlu_quick"] if c.retention_benchmark == "mmlu"
                                                      else [])
    for key in keys:
        if key in out["figures"]:
            f = out["figures"][key]
            drop_points = -100 * f["change"]
            out["flags"][key] = {"drop_points": drop_points,
                                 "acceptable": drop_points <= c.retention_flag_points,
                                 "within_success_bar": drop_points < c.retention_points,
                                 "max_drop_points": 100 * f["max_drop"],
                                 "limit_points": c.retention_flag_points,
                                 "success_bar_points": c.retention_points}
    if phases:
        out["backward_transfer"] = backward_transfer(records, phases)
    return out


def backward_transfer(records: list[EvalRecord], phases: list[dict]) -> dict:
    """BWT over phases (each {domain, end_step}): mean over all but the last phase of the change in that
    domain's held-out loss between the end of its phase and the end of the run (positive = forgotten)."""
    def domain_loss(record: EvalRecord, domain: str):
        return _attr(record.domain_perplexity("domain").get(domain), "loss")
    by_step = {r.step: r for r in records}
    final = records[-1]
    terms = {}
    for phase in phases[:-1]:
        at_end = by_step.get(phase["end_step"])
        if at_end is None:
            continue
        a, b = domain_loss(at_end, phase["domain"]), domain_loss(final, phase["domain"])
        if a is not None and b is not None:
            terms[phase["domain"]] = b - a
    return {"bwt_loss": sum(terms.values()) / len(terms) if terms else None, "per_domain": terms}


def write_analysis(run_dir: Path, eval_cfg: EvalConfig, phases: list[dict] | None = None) -> dict:
    result = analyze(load_evals(run_dir), eval_cfg, phases)
    (Path(run_dir) / "forgetting.json").write_text(json.dumps(result, indent=2))
    return result
