"""The figures of one run, read back from its files (config.yaml, summary.json, metrics.jsonl, evals/).

Scalars go to tables and figures.csv; the per-sample records that the verdicts' intervals need (held-out losses
at step 0 and at the end, per-question correctness, per-step timings) travel under keys starting with `_`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..config import RunConfig, load_config
from ..errors import UserError
from ..eval import stats
from ..eval.records import EvalRecord, load_evals
from ..train.methods import method_for


def point_name(run: str) -> str:
    """A run's point of the grid: its name without the seed suffix `-s<seed>`."""
    return re.sub(r"-s\d+$", "", run)


def _clipping(cfg: RunConfig) -> str:
    if cfg.train.max_grad_norm is None:
        return "none"
    if cfg.method.layerwise and cfg.method.layerwise_clipping == "per_tensor":
        return f"per-tensor {cfg.train.max_grad_norm:g}"
    return f"global {cfg.train.max_grad_norm:g}"


def run_figures(run_dir: str | Path) -> dict:
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run}: not a run directory (no config.yaml)")
    cfg = load_config(run / "config.yaml")
    method = method_for(cfg.method)
    c = cfg.eval.criteria
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] \
        if (run / "metrics.jsonl").is_file() else []
    evals = load_evals(run)
    out = {"run": run.name, "point": point_name(run.name), "path": str(run), "method": method.name,
           "method_label": method.label, "reference": method.reference, "layerwise": cfg.method.layerwise,
           "rank": method.rank, "clipping": _clipping(cfg), "lr": cfg.train.lr,
           "precision": summary.get("precision"),
           "replay_ratio": cfg.replay.ratio, "conversations": cfg.data.max_conversations, "seed": cfg.seed,
           # what memory and throughput are per: a micro-batch of batch_size sequences of max_seq_len tokens
           "micro_batch": [cfg.train.batch_size, cfg.render.max_seq_len, cfg.render.pack],
           "model": cfg.model.name, "steps": summary.get("steps", len(metrics)),
           "tokens": summary.get("tokens"), "tokens_per_s": summary.get("tokens_per_s"),
           "final_train_loss": summary.get("final_loss"), "finished": bool(summary), "_criteria": c}
    if summary.get("throughput"):
        t = summary["throughput"]
        out["_steps"] = (t["step_tokens"], t["step_seconds"])
        out["eval_seconds"] = t["eval_seconds"]
    if metrics:
        out.update(_memory(metrics, summary))
        out["loss_curve"] = [(r["step"], r["loss"]) for r in metrics]
    if evals:
        out.update(_eval_figures(evals, c))
    if (run / "adaptation.json").is_file():
        out["adaptation"] = json.loads((run / "adaptation.json").read_text())
        out.update(_adaptation_figures(out["adaptation"], c))
    return out


def _memory(metrics: list[dict], summary: dict) -> dict:
    """Training state (weights + gradients at peak + optimizer state, counted) and the peak memory of a step:
    the allocator's on a GPU, counted state + measured activations on CPU."""
    peak = summary.get("peak_memory") or metrics[-1]["memory"]
    state = metrics[-1]["memory"].get("model_param_bytes", 0) + peak.get("grad_bytes_peak", 0) + \
        peak.get("optimizer_state_bytes", 0)
    out = {"training_state_bytes": state, "optimizer_state_bytes": peak.get("optimizer_state_bytes"),
           "activation_bytes_peak": peak.get("activation_bytes_peak") or None,
           "eval_peak_bytes": summary.get("eval_peak_bytes"),  # apart: never the method's peak
           # measured on a CPU: the training process's peak resident set between evaluations (libraries,
           # allocator slack and all; at a tiny shape it is mostly Python's own, so counts decide there)
           "rss_peak_bytes": peak.get("rss_peak_bytes") or None}
    if peak.get("cuda_peak_bytes"):
        out["peak_memory_bytes"], out["peak_memory_source"] = peak["cuda_peak_bytes"], "cuda max_memory_allocated"
    elif peak.get("activation_bytes_peak"):
        out["peak_memory_bytes"] = state + peak["activation_bytes_peak"]
        out["peak_memory_source"] = "counted state + measured activations"
    return out


def _eval_figures(evals: list[EvalRecord], c) -> dict:
    first, last = evals[0], evals[-1]
    out: dict = {"eval_steps": [e.step for e in evals]}
    from_step0 = first.step == 0
    for key, mask, name in (("conversation_ppl", "assistant", "conversation_ppl"),
                            ("conversation_ppl", "all", "conversation_ppl_all"),
                            ("original_ppl", "all", "original_ppl")):
        series = [(e.step, e.perplexity(key, mask).ppl) for e in evals if e.perplexity(key, mask) is not None]
        out[f"{name}_series"] = series
        if series and from_step0 and len(series) > 1:
            out[f"{name}_step0"], out[f"{name}_final"] = series[0][1], series[-1][1]
            out[f"{name}_change"] = (series[-1][1] - series[0][1]) / series[0][1]
            a, b = first.per_sample(key), last.per_sample(key)
            if a is not None and b is not None:
                ci = stats.ppl_change(a, b, mask, c.bootstrap_samples, c.confidence)
                if ci is not None:
                    out[f"{name}_change_low"], out[f"{name}_change_high"] = ci["low"], ci["high"]
                out[f"_{name}_samples"] = (a, b)
    out.update(_retention(evals, c))
    for label, heldout, key in (("probe_verbatim", False, "answer_contained"),
                                ("probe_heldout", True, "answer_contained"),
                                ("probe_mc", True, "ll_accuracy"), ("probe_mc_verbatim", False, "ll_accuracy")):
        series = [(e.step, e.probe(key, heldout)) for e in evals if e.probe(key, heldout) is not None]
        if series:
            out[f"{label}_step0"], out[f"{label}_final"] = series[0][1], series[-1][1]
    if last.probe("chance") is not None:
        out["probe_chance"] = last.probe("chance")
    # the evidence that facts were learned: held-out accuracy above the mismatched-subject control, by fact
    if last.probe_control() is not None:
        out["probe_control_final"] = last.probe_control()
    for name in ("lift", "vs_chance"):
        t = last.probe_test(name)
        if t:
            out[f"probe_{name}"], out[f"probe_{name}_low"], out[f"probe_{name}_high"] = (
                t["difference"], t["low"], t["high"])
            out[f"probe_{name}_p"] = t["p_value"]
    out["probe_accuracy_step0"], out["probe_accuracy_final"] = out.get("probe_mc_step0"), out.get("probe_mc_final")
    for (kind, name), score in last.benchmark_scores().items():
        base = first.benchmark(name, kind)
        if kind == "benchmarks" and base is not None:
            out[f"bench_{name}_delta"] = score - base
    domain_series: dict[str, list] = {}
    for e in evals:
        for dom, fig in e.domain_perplexity("domain").items():
            domain_series.setdefault(dom, []).append((e.step, fig.loss))
    out["domain_loss_series"] = domain_series
    return out


def _retention(evals: list[EvalRecord], c) -> dict:
    """The retention benchmark at step 0 and at the end: the change in points, McNemar's test and a paired
    interval on the same questions, and whether step 0 was distinguishable from chance at all."""
    series = [(e.step, e.retention(c.retention_benchmark)) for e in evals]
    series = [(s, r) for s, r in series if r[0] is not None]
    out: dict = {"retention_benchmark": c.retention_benchmark, "retention_series": [(s, r[0]) for s, r in series]}
    if not series or series[0][0] != 0:
        return out
    (_, (v0, source, fig0)), (_, (v1, _, fig1)) = series[0], series[-1]
    out.update(retention_source=source, retention_step0=v0, retention_final=v1,
               retention_delta_points=100 * (v1 - v0))
    if fig0.get("correct") and fig0.get("chance") is not None:
        chance = stats.above_chance(fig0["correct"], fig0["chance"], 1 - c.confidence)
        out.update(retention_chance=chance["chance"], retention_step0_p_vs_chance=chance["p_value"],
                   retention_measurable=chance["above_chance"])
    if len(series) > 1 and fig0.get("correct") and fig1.get("correct"):
        test = stats.accuracy_change(fig0["correct"], fig1["correct"], c.bootstrap_samples, c.confidence)
        if test is not None:
            out.update(retention_delta_low=test["low"], retention_delta_high=test["high"],
                       retention_p_value=test["p_value"])
    # the figures of the earlier reports, by their old names
    out["mmlu_step0"], out["mmlu_final"], out["mmlu_delta_points"] = v0, v1, out["retention_delta_points"]
    return out


def _adaptation_figures(adapt: dict, c) -> dict:
    level = f"steps_to_{round(100 * c.adaptation_level)}"
    switches = adapt.get("switches", [])
    adapted = [s for s in switches if s.get("adapted")]
    steps = sorted(s[level] for s in adapted if s.get(level) is not None)
    return {"adaptation_switches": len(switches), "adaptation_adapted": len(adapted),
            "adaptation_median_steps": steps[len(steps) // 2] if steps else None}
