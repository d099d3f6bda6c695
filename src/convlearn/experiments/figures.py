"""The figures of one run, read back from its files (config.yaml, summary.json, metrics.jsonl, evals/)."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..eval.forgetting import load_evals


def _pick(record: dict, *path):
    node = record.get("evaluations", {})
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def mmlu_score(record: dict):
    """MMLU accuracy of an eval record: the full benchmark if it ran, else the quick-eval."""
    for path in (("benchmarks", "mmlu", "score"), ("mmlu_quick", "mmlu_quick", "score")):
        v = _pick(record, *path)
        if isinstance(v, (int, float)):
            return v, path[0]
    return None, None


def run_figures(run_dir: str | Path) -> dict:
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        from ..errors import UserError
        raise UserError(f"{run}: not a run directory (no config.yaml)")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] \
        if (run / "metrics.jsonl").is_file() else []
    evals = load_evals(run)
    m = cfg["method"]
    out = {"run": run.name, "path": str(run), "method": m["name"], "layerwise": m.get("layerwise", False),
           "rank": m["rank"] if m["name"] in ("galore", "galore8bit", "apollo") else
           (m["lora_rank"] if m["name"] == "lora" else None),
           "replay_ratio": cfg.get("replay", {}).get("ratio", 0.0),
           "conversations": cfg["data"].get("max_conversations"), "seed": cfg.get("seed"),
           "model": cfg["model"]["name"], "steps": summary.get("steps", len(metrics)),
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
        out["eval_steps"] = [e["step"] for e in evals]
        for key in ("conversation_ppl", "original_ppl"):
            series = [(e["step"], _pick(e, key, "all", "ppl")) for e in evals if _pick(e, key, "all", "ppl")]
            out[f"{key}_series"] = series
            if series and series[0][0] == 0:
                out[f"{key}_step0"], out[f"{key}_final"] = series[0][1], series[-1][1]
                out[f"{key}_change"] = (series[-1][1] - series[0][1]) / series[0][1]
        mmlu = [(e["step"], mmlu_score(e)[0]) for e in evals if mmlu_score(e)[0] is not None]
        out["mmlu_series"] = mmlu
        if mmlu and mmlu[0][0] == 0:
            out["mmlu_step0"], out["mmlu_final"] = mmlu[0][1], mmlu[-1][1]
            out["mmlu_delta_points"] = 100 * (mmlu[-1][1] - mmlu[0][1])
            out["mmlu_source"] = mmlu_score(last)[1]
        for name, fig in (_pick(last, "benchmarks") or {}).items():
            base = _pick(first, "benchmarks", name, "score")
            if isinstance(fig, dict) and isinstance(fig.get("score"), (int, float)) and base is not None:
                out[f"bench_{name}_delta"] = fig["score"] - base
        probes = [(e["step"], _pick(e, "probes", "ll_accuracy")) for e in evals if _pick(e, "probes", "ll_accuracy")
                  is not None]
        if probes:
            out["probe_accuracy_step0"], out["probe_accuracy_final"] = probes[0][1], probes[-1][1]
        domain_series = {}
        for e in evals:
            for dom, fig in (_pick(e, "domain_ppl", "groups", "domain") or {}).items():
                domain_series.setdefault(dom, []).append((e["step"], fig["all"]["loss"]))
        out["domain_loss_series"] = domain_series
    if (run / "adaptation.json").is_file():
        out["adaptation"] = json.loads((run / "adaptation.json").read_text())
        steps = sorted(s for s in out["adaptation"].get("steps_to_90", []) if s is not None)
        out["adaptation_steps_to_90"] = steps[len(steps) // 2] if steps else None
    return out
