"""Online adaptation speed: when the training stream switches to a new domain (topic), how many steps until its
held-out loss has made X% of the improvement it eventually makes in that phase; and what happened meanwhile to
the domains trained before."""
from __future__ import annotations

import json
from pathlib import Path

from .records import EvalRecord, load_evals


def phases_from_metrics(metrics: list[dict]) -> list[dict]:
    """Contiguous runs of steps whose batches were mostly one domain: [{domain, start, end}]."""
    phases: list[dict] = []
    for r in metrics:
        dom = (r.get("data") or {}).get("domain")
        if dom is None:
            continue
        if phases and phases[-1]["domain"] == dom:
            phases[-1]["end"] = r["step"]
        else:
            phases.append({"domain": dom, "start": r["step"], "end": r["step"]})
    return phases


def _domain_losses(evals: list[EvalRecord]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for e in evals:
        for dom, fig in e.domain_perplexity("domain").items():
            out.setdefault(dom, {})[e.step] = fig.loss
    return out


def adaptation(metrics: list[dict], evals: list[EvalRecord], levels: list[float]) -> dict:
    phases = phases_from_metrics(metrics)
    losses = _domain_losses(evals)
    switches = []
    for i, ph in enumerate(phases[1:], start=1):
        series = losses.get(ph["domain"], {})
        before = [s for s in series if s < ph["start"]]
        during = sorted(s for s in series if ph["start"] <= s <= ph["end"])
        if not before or not during:
            continue
        at = max(before)
        base = series[at]
        best = min(series[s] for s in during)
        gain = base - best
        entry = {"domain": ph["domain"], "step": ph["start"], "phase_end": ph["end"], "base_loss": base,
                 "best_loss": best, "improvement": gain}
        for x in levels:
            reached = next((s for s in during if gain > 0 and base - series[s] >= x * gain), None)
            entry[f"steps_to_{round(100 * x)}"] = None if reached is None else reached - at
        older = {p["domain"] for p in phases[:i]} - {ph["domain"]}
        entry["old_domains_loss_change"] = {
            d: losses[d][max(during)] - losses[d][at] for d in sorted(older)
            if d in losses and at in losses[d] and max(during) in losses[d]}
        switches.append(entry)
    return {"phases": phases, "switches": switches, "levels": levels,
            **{f"steps_to_{round(100 * x)}": [s.get(f"steps_to_{round(100 * x)}") for s in switches]
               for x in levels}}


def write_adaptation(run_dir: Path, levels: list[float]) -> dict | None:
    run_dir = Path(run_dir)
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    result = adaptation(metrics, load_evals(run_dir), levels)
    if len(result["phases"]) < 2:
        return None
    (run_dir / "adaptation.json").write_text(json.dumps(result, indent=2))
    return result
