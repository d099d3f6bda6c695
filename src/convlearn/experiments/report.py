"""`convlearn report RUN_DIR...`: tables, plots, a CSV of every figure, and verdicts, from the runs' files."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from .figures import run_figures
from .plots import make_plots
from .verdicts import CRITERIA, hypothesis, success_criteria

LEARNING = ["method", "rank", "replay_ratio", "conversations", "steps", "conversation_ppl_step0",
            "conversation_ppl_final", "conversation_ppl_change", "probe_accuracy_step0", "probe_accuracy_final",
            "adaptation_steps_to_90"]
FORGETTING = ["original_ppl_step0", "original_ppl_final", "original_ppl_change", "mmlu_step0", "mmlu_final",
              "mmlu_delta_points"]
COST = ["tokens", "tokens_per_s", "speed_vs_adamw", "training_state_bytes", "memory_vs_adamw",
        "final_train_loss", "seed"]
SCALARS = LEARNING + FORGETTING + COST


def _cell(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_report(run_dirs: list[str | Path], out: str | Path, experiment: str = "custom", title: str = "",
                 hypothesis_text: str = "") -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [run_figures(d) for d in run_dirs]
    criteria = success_criteria(runs)
    hyp = hypothesis(experiment, runs)
    if hypothesis_text and not hyp.get("statement"):
        hyp["statement"] = hypothesis_text
    plots = make_plots(runs, out, experiment)

    with open(out / "figures.csv", "w", newline="") as fh:  # every figure, long format
        w = csv.writer(fh)
        w.writerow(["run", "figure", "value"])
        for r in runs:
            for k, v in r.items():
                if isinstance(v, (int, float, str, bool)) or v is None:
                    w.writerow([r["run"], k, v])
        for point, verdicts in criteria.items():
            for name, v in verdicts.items():
                w.writerow([point, f"verdict:{name}", f"{v['verdict']} ({v['figure']})"])

    lines = [f"# {title or 'convlearn report'}", "", f"{len(runs)} runs: " + ", ".join(r["run"] for r in runs), ""]
    for title, cols in (("Learning", LEARNING), ("Forgetting", FORGETTING), ("Cost", COST)):
        lines += [f"## {title}", "", "| run | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += [f"| {r['run']} | " + " | ".join(_cell(r.get(k)) for k in cols) + " |" for r in runs]
        lines.append("")
    bench = sorted({k for r in runs for k in r if k.startswith("bench_")})
    if bench:
        lines += ["", "### Benchmark change from step 0", "", "| run | " + " | ".join(
            b.removeprefix("bench_").removesuffix("_delta") for b in bench) + " |", "|---" * (len(bench) + 1) + "|"]
        lines += [f"| {r['run']} | " + " | ".join(_cell(r.get(b)) for b in bench) + " |" for r in runs]
    lines += ["", "## Verdicts against the success criteria", "",
              "| point | " + " | ".join(CRITERIA.values()) + " |", "|---" * (len(CRITERIA) + 1) + "|"]
    for point, v in criteria.items():
        lines.append(f"| {point} | " + " | ".join(f"**{v[c]['verdict']}** ({v[c]['figure']})" for c in CRITERIA) + " |")
    if hyp.get("statement"):
        lines += ["", "## Hypothesis", "", hyp["statement"], ""]
        for name, v in hyp.get("verdicts", {}).items():
            lines.append(f"- {name}: **{v['verdict']}** — {v['figure']}")
        if "fit" in hyp:
            lines.append(f"- fit: {json.dumps(hyp['fit'])}")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "Figures: `figures.csv` (every figure of every run, and every verdict)."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    summary = {"runs": [r["run"] for r in runs], "criteria": criteria, "hypothesis": hyp,
               "plots": [p.name for p in plots], "report": str(out / "report.md")}
    (out / "verdicts.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def headline_table(summary: dict, out: Path) -> str:
    """The headline of report.md: the learning and forgetting tables and the verdicts, for printing."""
    text = (Path(out) / "report.md").read_text()
    head, _, rest = text.partition("## Cost")
    verdicts = "## Verdicts" + rest.partition("## Verdicts")[2]
    return head + verdicts.split("## Plots")[0]
