"""Forgetting analysis over a run's `evals/step-*.json`: per figure the change from step 0 (absolute and
relative), the largest drop at any step, backward transfer across phases, and flags against thresholds."""
from __future__ import annotations

import json
from pathlib import Path

# figure -> (path into a step record, higher is better)
def _series_keys(record: dict) -> dict[str, tuple[tuple, bool]]:
    keys = {}
    ev = record["evaluations"]
    for name in ("conversation_ppl", "original_ppl"):
        if name in ev and "all" in ev[name]:
            keys[f"{name}.loss"] = ((name, "all", "loss"), False)
            keys[f"{name}.bits_per_byte"] = ((name, "all", "bits_per_byte"), False)
    for name in ("benchmarks", "mmlu_quick"):
        for bench, fig in ev.get(name, {}).items():
            if isinstance(fig, dict) and "score" in fig:
                keys[f"{name}.{bench}"] = ((name, bench, "score"), True)
    if "probes" in ev and "ll_accuracy" in ev["probes"]:
        keys["probes.ll_accuracy"] = (("probes", "ll_accuracy"), True)
    if "quality" in ev and ev["quality"].get("rougeL") is not None:
        keys["quality.rougeL"] = (("quality", "rougeL"), True)
    return keys


def _get(record: dict, path: tuple):
    node = record["evaluations"]
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node if isinstance(node, (int, float)) else None


def load_evals(run_dir: Path) -> list[dict]:
    files = sorted((Path(run_dir) / "evals").glob("step-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    return [json.loads(f.read_text()) for f in files]


def analyze(records: list[dict], eval_cfg, phases: list[dict] | None = None) -> dict:
    if not records or records[0]["step"] != 0:
        return {"skipped": "no step-0 evaluation to compare with"}
    base = records[0]
    out = {"steps": [r["step"] for r in records], "figures": {}, "flags": {}}
    for name, (path, higher_better) in _series_keys(base).items():
        series = [(r["step"], _get(r, path)) for r in records if _get(r, path) is not None]
        v0, (last_step, v1) = series[0][1], series[-1]
        drop = lambda v: (v0 - v) if higher_better else (v - v0)  # noqa: E731 (positive = worse)
        worst = max(series, key=lambda sv: drop(sv[1]))
        out["figures"][name] = {"step0": v0, "final": v1, "final_step": last_step, "change": v1 - v0,
                                "relative_change": (v1 - v0) / v0 if v0 else None,
                                "max_drop": max(0.0, drop(worst[1])), "max_drop_step": worst[0],
                                "higher_is_better": higher_better, "series": series}
    for key in ("benchmarks.mmlu", "mmlu_quick.mmlu_quick"):
        if key in out["figures"]:
            f = out["figures"][key]
            drop_points = -100 * f["change"]
            out["flags"][key] = {"drop_points": drop_points,
                                 "acceptable": drop_points <= eval_cfg.mmlu_drop_limit,
                                 "within_success_bar": drop_points < eval_cfg.mmlu_success_bar,
                                 "max_drop_points": 100 * f["max_drop"],
                                 "limit_points": eval_cfg.mmlu_drop_limit,
                                 "success_bar_points": eval_cfg.mmlu_success_bar}
    if phases:
        out["backward_transfer"] = backward_transfer(records, phases)
    return out


def backward_transfer(records: list[dict], phases: list[dict]) -> dict:
    """BWT over phases (each {domain, end_step}): mean over all but the last phase of the change in that
    domain's held-out loss between the end of its phase and the end of the run (positive = forgotten)."""
    def domain_loss(record, domain):
        groups = record["evaluations"].get("domain_ppl", {}).get("groups", {}).get("domain", {})
        return groups.get(domain, {}).get("all", {}).get("loss")
    by_step = {r["step"]: r for r in records}
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


def write_analysis(run_dir: Path, eval_cfg, phases: list[dict] | None = None) -> dict:
    result = analyze(load_evals(run_dir), eval_cfg, phases)
    (Path(run_dir) / "forgetting.json").write_text(json.dumps(result, indent=2))
    return result
