"""PNG plots of a report: learning curves, forgetting over steps, memory and speed bars, and the
experiment-specific ones (data-scaling fit, replay comparison, online adaptation)."""
from __future__ import annotations

import math
from pathlib import Path

from ..eval.stats import slope_interval


def _plt():
    import matplotlib  # ~1 s to import: only when a report draws
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _smooth(ys: list[float], k: int = 10) -> list[float]:
    out, acc = [], []
    for y in ys:
        acc = (acc + [y])[-k:]
        out.append(sum(acc) / len(acc))
    return out


def make_plots(runs: list[dict], out: Path, experiment: str, lr_search: dict | None = None) -> list[Path]:
    plt = _plt()
    paths = []
    if lr_search:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, m in lr_search["methods"].items():
            curve = sorted((c["lr"], c["ppl"]) for c in m["curve"] if math.isfinite(c["ppl"]))
            ax.plot([x for x, _ in curve], [y for _, y in curve], marker="o", label=f"{label} (picked {m['lr']:.3g})")
        ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="held-out perplexity after the pilot",
               title="learning-rate sensitivity")
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / "lr_sensitivity.png", plt))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        curve = [(s, v) for s, v in r.get("loss_curve", []) if v == v]
        if curve:
            axes[0].plot([s for s, _ in curve], _smooth([v for _, v in curve]), label=r["run"])
        series = r.get("conversation_ppl_series") or []
        if series:
            axes[1].plot([s for s, _ in series], [v for _, v in series], marker="o", label=r["run"])
    axes[0].set(title="training loss (smoothed)", xlabel="step", ylabel="nats/token")
    axes[1].set(title="held-out conversation perplexity (assistant tokens)", xlabel="step", ylabel="perplexity",
                yscale="log")
    for ax in axes:
        ax.legend(fontsize=7)
    paths.append(_save(fig, out / "learning_curves.png", plt))

    if any(r.get("original_ppl_series") or r.get("retention_series") for r in runs):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for r in runs:
            for ax, key in ((axes[0], "original_ppl_series"), (axes[1], "retention_series")):
                series = r.get(key) or []
                if series:
                    ax.plot([s for s, _ in series], [v for _, v in series], marker="o", label=r["run"])
        axes[0].set(title="original-distribution perplexity (forgetting)", xlabel="step", ylabel="perplexity")
        bench = next((r.get("retention_benchmark") for r in runs if r.get("retention_benchmark")), "retention")
        axes[1].set(title=f"{bench} accuracy (retention)", xlabel="step", ylabel="accuracy")
        for ax in axes:
            ax.legend(fontsize=7)
        paths.append(_save(fig, out / "forgetting.png", plt))

    if any(r.get("memory_vs_adamw") for r in runs):
        fig, ax = plt.subplots(figsize=(8, 4))
        names = [r["run"] for r in runs]
        x = range(len(names))
        ax.bar([i - 0.27 for i in x], [r.get("memory_vs_adamw") or 0 for r in runs], 0.27,
               label="training peak memory / AdamW's")
        ax.bar([i for i in x], [r.get("speed_vs_adamw") or 0 for r in runs], 0.27, label="speed / AdamW")
        # the evaluation's peak, apart (on the same scale): it is no method's cost and never enters the verdict
        ax.bar([i + 0.27 for i in x], [_eval_vs_adamw(r) for r in runs], 0.27, color="lightgray",
               label="evaluation peak / AdamW's training peak")
        ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=7)
        c = runs[0]["_criteria"]
        ax.axhline(c.memory_ratio, ls="--", c="gray", lw=0.8)
        ax.axhline(c.speed_ratio, ls=":", c="gray", lw=0.8)
        ax.set(title=f"peak memory and speed relative to AdamW (targets: < {c.memory_ratio:g}, > {c.speed_ratio:g})")
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / "memory_speed.png", plt))

    if experiment == "data_scaling":
        pts = sorted((r["conversations"], r["conversation_ppl_final"]) for r in runs
                     if r.get("conversations") and r.get("conversation_ppl_final"))
        if len(pts) >= 2:
            fit = slope_interval([float(x) for x, _ in pts], [y for _, y in pts])
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot([x for x, _ in pts], [y for _, y in pts], "o", label="runs")
            xs = [pts[0][0] * (pts[-1][0] / pts[0][0]) ** (i / 20) for i in range(21)]
            ax.plot(xs, [fit["intercept"] + fit["slope"] * math.log(x) for x in xs], "-",
                    label=f"fit: slope {fit['slope']:.3g}, R² {fit['r2']:.2f}")
            ax.set(xscale="log", xlabel="training conversations", ylabel="final held-out perplexity",
                   title="data scaling")
            ax.legend(fontsize=7)
            paths.append(_save(fig, out / "data_scaling.png", plt))

    if experiment == "replay":
        pts = sorted((r["replay_ratio"], r["original_ppl_change"]) for r in runs if r.get("original_ppl_change")
                     is not None)
        if pts:
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot([100 * x for x, _ in pts], [100 * y for _, y in pts], "o")
            ax.set(xlabel="replay (% of each batch)", ylabel="original perplexity change (%)",
                   title="forgetting vs replay")
            paths.append(_save(fig, out / "replay.png", plt))

    if experiment == "online":
        for r in runs:
            series = r.get("domain_loss_series") or {}
            if not series:
                continue
            fig, ax = plt.subplots(figsize=(8, 4))
            for dom, pts in series.items():
                ax.plot([s for s, _ in pts], [v for _, v in pts], label=dom)
            for sw in (r.get("adaptation") or {}).get("switches", []):
                ax.axvline(sw["step"], c="gray", lw=0.6, ls="--")
            ax.set(title=f"online adaptation: held-out loss per topic ({r['run']})", xlabel="step",
                   ylabel="nats/token")
            ax.legend(fontsize=6, ncol=2)
            paths.append(_save(fig, out / f"online_{r['run']}.png", plt))
    return paths


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _eval_vs_adamw(run: dict) -> float:
    # memory_vs_adamw = peak / AdamW's peak, so AdamW's peak = peak / memory_vs_adamw
    if not (run.get("eval_peak_bytes") and run.get("memory_vs_adamw") and run.get("peak_memory_bytes")):
        return 0.0
    return run["eval_peak_bytes"] * run["memory_vs_adamw"] / run["peak_memory_bytes"]
