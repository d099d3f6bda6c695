"""The figures of one run, read back from its files (config.yaml, summary.json, metrics.jsonl, evals/)."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import load_config
from ..errors import UserError
from ..eval.records import load_evals
from ..train.methods import method_for


def run_figures(run_dir: str | Path) -> dict:
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run}: not a run directory (no config.yaml)")
    cfg = load_config(run / "config.yaml")
    method = method_for(cfg.method)
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] \
        if (run / "metrics.jsonl").is_file() else []
    evals = load_evals(run)
    out = {"run": run.name, "path": str(run), "method": method.name, "method_label": method.label,
           "layerwise": cfg.method.layerwise, "rank": method.rank, "replay_ratio": cfg.replay.ratio,
           "conversations": cfg.data.max_conversations, "seed": cfg.seed,
           "model": cfg.model.name, "steps": summary.get("steps", len(metrics)),
           "tokens": summary.get("tokens"), "tokens_per_s": summary.get("mean_tokens_per_s"),
           "final_train_loss": summary.get("final_loss"), "finished": bool(summary)}
    if metrics:
        mem = metrics[-1]["memory"]
        peak = summary.get("peak_memory", mem)
        out["training_state_bytes"] = mem.get("model_param_bytes", 0) + peak.get("grad_bytes_peak", 0) + \
            peak.get("optimizer_state_bytes", 0)
        out["optimizer_state_bytes"] = peak.get("optimizer_state_bytes")
        out["cuda_peak_bytes"] = peak.get("cuda_peak_bytes") or None
        out["loss_curve"] = [(r["step"], r["loss"]) for r in metrics]
        out["trained_conversations"] = metrics[-1].get("loss_tokens")
    if evals:
        first, last = evals[0], evals[-1]
        out["eval_steps"] = [e.step for e in evals]
        for key in ("conversation_ppl", "original_ppl"):
            series = [(e.step, e.perplexity(key).ppl) for e in evals if e.perplexity(key) is not None
                      and e.perplexity(key).ppl]
            out[f"{key}_series"] = series
            if series and series[0][0] == 0:
                out[f"{key}_step0"], out[f"{key}_final"] = series[0][1], series[-1][1]
                out[f"{key}_change"] = (series[-1][1] - series[0][1]) / series[0][1]
        mmlu = [(e.step, e.mmlu()[0]) for e in evals if e.mmlu()[0] is not None]
        out["mmlu_series"] = mmlu
        if mmlu and mmlu[0][0] == 0:
            out["mmlu_step0"], out["mmlu_final"] = mmlu[0][1], mmlu[-1][1]
            out["mmlu_delta_points"] = 100 * (mmlu[-1][1] - mmlu[0][1])
            out["mmlu_source"] = last.mmlu()[1]
        for (kind, name), score in last.benchmark_scores().items():
            base = first.benchmark(name, kind)
            if kind == "benchmarks" and base is not None:
                out[f"bench_{name}_delta"] = score - base
        probes = [(e.step, e.probe("ll_accuracy")) for e in evals if e.probe("ll_accuracy") is not None]
        if probes:
            out["probe_accuracy_step0"], out["probe_accuracy_final"] = probes[0][1], probes[-1][1]
        domain_series: dict[str, list] = {}
        for e in evals:
            for dom, fig in e.domain_perplexity("domain").items():
                domain_series.setdefault(dom, []).append((e.step, fig.loss))
        out["domain_loss_series"] = domain_series
    if (run / "adaptation.json").is_file():
        out["adaptation"] = json.loads((run / "adaptation.json").read_text())
        steps = sorted(s for s in out["adaptation"].get("steps_to_90", []) if s is not None)
        out["adaptation_steps_to_90"] = steps[len(steps) // 2] if steps else None
    return out
