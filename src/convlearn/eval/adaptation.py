"""Online adaptation speed: when the training stream switches to a new domain (topic), how many steps until its
held-out loss has made X% of the improvement it eventually makes in that phase; and what happened meanwhile to
the domains trained before."""
from __future__ import annotations

import json
from pathlib import Path
from statistics import NormalDist

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


def _domain_losses(evals: list[EvalRecord]) -> dict[str, dict[int, tuple[float, float | None]]]:
    """domain -> step -> (held-out loss, its standard error over conversations)."""
    out: dict[str, dict[int, tuple[float, float | None]]] = {}
    for e in evals:
        for dom, fig in e.domain_perplexity("domain").items():
            out.setdefault(dom, {})[e.step] = (fig.loss, fig.loss_se)
    return out


def adaptation(metrics: list[dict], evals: list[EvalRecord], levels: list[float], confidence: float = 0.95
               ) -> dict:
    """Per switch to a new topic: its held-out loss before the phase and at the phase's end, and whether that
    improvement is real: larger than the evaluation noise (z x the standard error of the difference, from the
    per-conversation losses) and larger than a no-training control (the same topic's drift over an equally long
    stretch just before its phase, while the stream trained on other topics, plus that noise). Steps to each
    level of the improvement are reported for adapted topics only; the others say `adapted: false`."""
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    phases = phases_from_metrics(metrics)
    losses = _domain_losses(evals)
    switches = []
    for i, ph in enumerate(phases[1:], start=1):
        series = losses.get(ph["domain"], {})
        before = [s for s in series if s < ph["start"]]
        during = sorted(s for s in series if ph["start"] <= s <= ph["end"])
        if not before or not during:
            continue
        at, end = max(before), during[-1]
        (base, se0), (final, se1) = series[at], series[end]
        gain = base - final
        noise = z * ((se0 or 0.0) ** 2 + (se1 or 0.0) ** 2) ** 0.5 if se0 is not None and se1 is not None \
            else None
        control = _control_drift(series, at, end - at)
        adapted = noise is not None and gain > noise and gain > max(control or 0.0, 0.0) + noise
        entry = {"domain": ph["domain"], "step": ph["start"], "phase_end": ph["end"], "base_loss": base,
                 "final_loss": final, "improvement": gain, "noise": noise, "control_drift": control,
                 "adapted": adapted, "best_loss": min(series[s][0] for s in during)}
        for x in levels:
            reached = next((s for s in during if base - series[s][0] >= x * gain), None) if adapted else None
            entry[f"steps_to_{round(100 * x)}"] = None if reached is None else reached - at
        older = {p["domain"] for p in phases[:i]} - {ph["domain"]}
        entry["old_domains_loss_change"] = {
            d: losses[d][end][0] - losses[d][at][0] for d in sorted(older)
            if d in losses and at in losses[d] and end in losses[d]}
        switches.append(entry)
    return {"phases": phases, "switches": switches, "levels": levels, "confidence": confidence,
            "adapted": sum(s["adapted"] for s in switches),
            **{f"steps_to_{round(100 * x)}": [s.get(f"steps_to_{round(100 * x)}") for s in switches]
               for x in levels}}


def _control_drift(series: dict[int, tuple], at: int, span: int) -> float | None:
    """How much the topic's loss fell over `span` steps before `at` (scaled from the nearest evaluation that far
    back), while it was not being trained on; None without an earlier evaluation."""
    earlier = [s for s in series if s < at]
    if not earlier or span <= 0:
        return None
    start = max((s for s in earlier if s <= at - span), default=min(earlier))
    return (series[start][0] - series[at][0]) * span / (at - start)


def write_adaptation(run_dir: Path, levels: list[float], confidence: float = 0.95) -> dict | None:
    run_dir = Path(run_dir)
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    result = adaptation(metrics, load_evals(run_dir), levels, confidence)
    if len(result["phases"]) < 2:
        return None
    (run_dir / "adaptation.json").write_text(json.dumps(result, indent=2))
    return result
