"""Verdicts against the research plan's success criteria and each experiment's hypothesis.

Every verdict carries the figure behind it and says `not measured` when the runs lack that figure; with
several seeds per point the spread is reported next to the mean.
"""
from __future__ import annotations

import math
import re
import statistics

CRITERIA = {
    "conversation_ppl": "conversation perplexity down >= 15% from step 0",
    "mmlu": "MMLU within 3 points of step 0",
    "memory": "training-state memory < 50% of AdamW's",
    "speed": "throughput > 80% of AdamW's",
}


def _verdict(ok: bool | None, figure: str) -> dict:
    return {"verdict": "not measured" if ok is None else ("pass" if ok else "fail"), "figure": figure}


def point_name(run: str) -> str:
    return re.sub(r"-s\d+$", "", run)


def grouped(runs: list[dict], key: str) -> dict[str, tuple[float, float, int]]:
    """point -> (mean, std, n) of a figure across seeds."""
    out: dict[str, list[float]] = {}
    for r in runs:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out.setdefault(point_name(r["run"]), []).append(float(v))
    return {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for k, v in out.items()}


def _fmt(mean_std) -> str:
    mean, std, n = mean_std
    return f"{mean:.4g}" + (f" ± {std:.2g} (n={n})" if n > 1 else "")


def success_criteria(runs: list[dict]) -> dict[str, dict]:
    """Per point (seeds pooled), the four success criteria; AdamW runs are the memory/speed reference."""
    adamw = [r for r in runs if r["method"] == "adamw"]
    ref_mem = statistics.fmean(r["training_state_bytes"] for r in adamw if r.get("training_state_bytes")) \
        if any(r.get("training_state_bytes") for r in adamw) else None
    ref_speed = statistics.fmean(r["tokens_per_s"] for r in adamw if r.get("tokens_per_s")) \
        if any(r.get("tokens_per_s") for r in adamw) else None
    for r in runs:
        r["memory_vs_adamw"] = r["training_state_bytes"] / ref_mem if ref_mem and r.get("training_state_bytes") \
            else None
        r["speed_vs_adamw"] = r["tokens_per_s"] / ref_speed if ref_speed and r.get("tokens_per_s") else None
    ppl = grouped(runs, "conversation_ppl_change")
    mmlu = grouped(runs, "mmlu_delta_points")
    mem = grouped(runs, "memory_vs_adamw")
    speed = grouped(runs, "speed_vs_adamw")
    out = {}
    for point in dict.fromkeys(point_name(r["run"]) for r in runs):
        method = next(r["method"] for r in runs if point_name(r["run"]) == point)
        v = {}
        v["conversation_ppl"] = _verdict(ppl[point][0] <= -0.15, f"{_fmt(ppl[point])} relative change") \
            if point in ppl else _verdict(None, "no step-0 and final conversation perplexity")
        v["mmlu"] = _verdict(mmlu[point][0] > -3,
                             f"{_fmt(mmlu[point])} points") if point in mmlu else \
            _verdict(None, "no MMLU at step 0 and at the end")
        if method == "adamw":
            v["memory"] = v["speed"] = {"verdict": "reference", "figure": "AdamW is the baseline"}
        else:
            v["memory"] = _verdict(mem[point][0] < 0.5, f"{_fmt(mem[point])} of AdamW") if point in mem else \
                _verdict(None, "no AdamW run to compare with")
            v["speed"] = _verdict(speed[point][0] > 0.8, f"{_fmt(speed[point])} of AdamW") if point in speed \
                else _verdict(None, "no AdamW run to compare with")
        out[point] = v
    return out


def log_linear_fit(xs: list[float], ys: list[float]) -> dict:
    """Least squares of y on ln(x): slope, intercept, R²."""
    lx = [math.log(x) for x in xs]
    mx, my = statistics.fmean(lx), statistics.fmean(ys)
    sxx = sum((a - mx) ** 2 for a in lx)
    slope = sum((a - mx) * (b - my) for a, b in zip(lx, ys)) / sxx
    intercept = my - slope * mx
    ss_res = sum((b - (intercept + slope * a)) ** 2 for a, b in zip(lx, ys))
    ss_tot = sum((b - my) ** 2 for b in ys)
    return {"slope": slope, "intercept": intercept, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0, "n": len(xs)}


def hypothesis(experiment: str, runs: list[dict]) -> dict:
    """The experiment's own hypothesis, with its criterion stated and the numbers behind the verdict."""
    if experiment == "optimizers":
        ppl, mem = grouped(runs, "conversation_ppl_change"), grouped(runs, "training_state_bytes")
        adamw = next((p for p in ppl if p.startswith("adamw")), None)
        lora = next((p for p in mem if p.startswith("lora")), None)
        rows = {}
        for p in ppl:
            if not p.startswith("galore"):
                continue
            learn = ppl[p][0] / ppl[adamw][0] if adamw and ppl[adamw][0] else None
            memr = mem[p][0] / mem[lora][0] if lora and p in mem else None
            ok = None if learn is None or memr is None else (learn >= 0.9 and memr <= 1.25)
            rows[p] = _verdict(ok, f"perplexity gain {learn:.2f}x AdamW's, memory {memr:.2f}x LoRA's"
                               if ok is not None else "needs adamw, lora and galore runs")
        return {"statement": "GaLore learns like AdamW (>= 0.9x its perplexity gain) with LoRA-like memory "
                             "(<= 1.25x LoRA's training state)", "verdicts": rows}
    if experiment == "data_scaling":
        pts = [(r["conversations"], r["conversation_ppl_final"]) for r in runs
               if r.get("conversations") and r.get("conversation_ppl_final")]
        if len(pts) < 3:
            return {"statement": "log-linear improvement, bounded forgetting",
                    "verdicts": {"fit": _verdict(None, "needs >= 3 data sizes with final perplexity")}}
        fit = log_linear_fit([float(x) for x, _ in pts], [y for _, y in pts])
        drops = [r["mmlu_delta_points"] for r in runs if r.get("mmlu_delta_points") is not None]
        return {"statement": "perplexity falls log-linearly in data size (slope < 0, R² >= 0.8); MMLU stays "
                             "within 3 points at every size", "fit": fit,
                "verdicts": {"log_linear": _verdict(fit["slope"] < 0 and fit["r2"] >= 0.8,
                                                    f"slope {fit['slope']:.3g} per ln(conversation), "
                                                    f"R² {fit['r2']:.2f}, n={fit['n']}"),
                             "bounded_forgetting": _verdict(min(drops) > -3 if drops else None,
                                                            f"worst MMLU change {min(drops):.2f} points"
                                                            if drops else "no MMLU figures")}}
    if experiment == "online":
        steps = [s for r in runs for s in (r.get("adaptation") or {}).get("steps_to_90", []) if s is not None]
        ok = None if not steps else statistics.median(steps) <= 1000
        return {"statement": "adapts to a new topic within ~1000 steps (median steps to 90% of the eventual "
                             "held-out improvement <= 1000)",
                "verdicts": {"adaptation": _verdict(ok, f"median {statistics.median(steps):.0f} steps over "
                                                        f"{len(steps)} topic switches" if steps else
                                                        "no topic switch measured")}}
    if experiment == "replay":
        forget = grouped(runs, "original_ppl_change")
        by_ratio = {}
        for r in runs:
            if r.get("original_ppl_change") is not None:
                by_ratio.setdefault(r["replay_ratio"], []).append(r["original_ppl_change"])
        if 0.0 not in by_ratio or 0.1 not in by_ratio:
            return {"statement": "10% replay significantly reduces forgetting",
                    "verdicts": {"replay_10": _verdict(None, "needs replay 0% and 10% runs with original ppl")}}
        a, b = by_ratio[0.0], by_ratio[0.1]
        spread = max(statistics.stdev(a) if len(a) > 1 else 0.0, statistics.stdev(b) if len(b) > 1 else 0.0)
        gain = statistics.fmean(a) - statistics.fmean(b)
        margin = 2 * spread if spread else 0.1 * abs(statistics.fmean(a))
        return {"statement": "10% replay reduces forgetting (original-distribution perplexity increase) by more "
                             "than 2x the seed spread (single seed: by > 10% of the no-replay increase)",
                "per_point": {k: _fmt(v) for k, v in forget.items()},
                "verdicts": {"replay_10": _verdict(gain > margin, f"increase {statistics.fmean(a):+.3f} without "
                                                                  f"replay vs {statistics.fmean(b):+.3f} with 10%; "
                                                                  f"margin {margin:.3f}")}}
    return {"statement": "", "verdicts": {}}
