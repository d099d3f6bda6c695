"""`convlearn report RUN_DIR...`: tables, plots, a CSV of every figure, and verdicts, from the runs' files.

The success criteria and hypothesis thresholds are the runs' own `eval.criteria` (they must agree).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from ..config import EvalConfig
from ..errors import UserError
from .figures import run_figures
from .plots import make_plots
from .registry import experiment as experiment_named
from .verdicts import CRITERIA, criteria_labels, success_criteria

LEARNING = ["method_label", "lr", "clipping", "replay_ratio", "conversations", "steps",
            "conversation_ppl_step0", "conversation_ppl_final", "conversation_ppl_change",
            "conversation_ppl_change_low", "conversation_ppl_change_high", "conversation_ppl_all_change",
            "adaptation_adapted", "adaptation_median_steps"]
# Knowledge probes: held-out accuracy means something only beside its control (the same phrasings about another
# subject) and chance; `probe_lift` is accuracy minus control per fact, its interval and p-value clustered by fact.
PROBES = ["probe_chance", "probe_mc_verbatim_final", "probe_heldout_final", "probe_mc_step0", "probe_mc_final",
          "probe_control_final", "probe_lift", "probe_lift_low", "probe_lift_high", "probe_lift_p"]
FORGETTING = ["original_ppl_step0", "original_ppl_final", "original_ppl_change", "retention_benchmark",
              "retention_step0", "retention_final", "retention_delta_points", "retention_delta_low",
              "retention_delta_high", "retention_p_value", "retention_measurable"]
COST = ["precision", "tokens", "tokens_per_s", "speed_vs_adamw", "speed_vs_adamw_low", "speed_vs_adamw_high",
        "peak_memory_bytes", "memory_vs_adamw", "training_state_bytes", "activation_bytes_peak",
        "eval_peak_bytes", "final_train_loss", "seed"]


def _cell(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _criteria(runs: list[dict]):
    found = [r["_criteria"] for r in runs]
    if any(c != found[0] for c in found[1:]):
        raise UserError("report: the runs' eval.criteria differ; report runs judged by the same criteria")
    return found[0] if found else EvalConfig().criteria


def write_report(run_dirs: list[str | Path], out: str | Path, experiment: str = "custom", title: str = "",
                 hypothesis_text: str = "", lr_choice: str | Path | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    exp = experiment_named(experiment)
    runs = [run_figures(d) for d in run_dirs]
    c = _criteria(runs)
    criteria = success_criteria(runs, c)
    hyp = exp.hypothesis(runs, c) if exp.hypothesis else {"statement": "", "verdicts": {}}
    if hypothesis_text and not hyp.get("statement"):
        hyp["statement"] = hypothesis_text
    search = json.loads(Path(lr_choice).read_text()) if lr_choice and Path(lr_choice).is_file() else None
    plots = make_plots(runs, out, experiment, search)

    with open(out / "figures.csv", "w", newline="") as fh:  # every figure, long format
        w = csv.writer(fh)
        w.writerow(["run", "figure", "value"])
        for r in runs:
            for k, v in r.items():
                if not k.startswith("_") and (isinstance(v, (int, float, str, bool)) or v is None):
                    w.writerow([r["run"], k, v])
        for point, verdicts in criteria.items():
            for name, v in verdicts.items():
                w.writerow([point, f"verdict:{name}", f"{v['verdict']} ({v['figure']})"])

    labels = criteria_labels(c)
    lines = [f"# {title or 'convlearn report'}", "", f"{len(runs)} runs: " + ", ".join(r["run"] for r in runs), ""]
    tables = [("Learning", LEARNING), ("Knowledge probes", PROBES), ("Forgetting", FORGETTING), ("Cost", COST)]
    for name, cols in tables:
        if name == "Knowledge probes" and not any(r.get("probe_mc_final") is not None for r in runs):
            continue
        lines += [f"## {name}", "", "| run | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        if name == "Knowledge probes":
            lines[-2:-2] = ["Likelihood choice of the true answer among other facts' answers taught as often "
                            "(`mc`), on the phrasings training asked (`verbatim`) and on held-out ones; `control`: "
                            "the held-out phrasings about another subject; `lift` = held-out minus control, per "
                            f"fact, with its {100 * c.confidence:g}% interval over facts and a sign-flip p-value. "
                            "A fact is learned when the lift is above 0, not when accuracy is high.", ""]
        lines += [f"| {r['run']} | " + " | ".join(_cell(r.get(k)) for k in cols) + " |" for r in runs]
        lines.append("")
    if search:
        lines += _lr_section(search)
    bench = sorted({k for r in runs for k in r if k.startswith("bench_")})
    if bench:
        lines += ["", "### Benchmark change from step 0", "", "| run | " + " | ".join(
            b.removeprefix("bench_").removesuffix("_delta") for b in bench) + " |", "|---" * (len(bench) + 1) + "|"]
        lines += [f"| {r['run']} | " + " | ".join(_cell(r.get(b)) for b in bench) + " |" for r in runs]
    lines += ["", "## Verdicts against the success criteria", "",
              f"Each figure with its {100 * c.confidence:g}% interval (or p-value): **pass** when the whole interval "
              f"is on the right side of the bar, **fail** when it is wholly on the wrong side, **inconclusive** "
              f"when it straddles it.", "",
              "| point | " + " | ".join(labels[k] for k in CRITERIA) + " |", "|---" * (len(CRITERIA) + 1) + "|"]
    for point, v in criteria.items():
        lines.append(f"| {point} | " + " | ".join(f"**{v[k]['verdict']}** ({v[k]['figure']})" for k in CRITERIA)
                     + " |")
    if hyp.get("statement"):
        lines += ["", "## Hypothesis", "", hyp["statement"], ""]
        for name, v in hyp.get("verdicts", {}).items():
            lines.append(f"- {name}: **{v['verdict']}** — {v['figure']}")
        for point, text in hyp.get("per_point", {}).items():
            lines.append(f"- {point}: original-distribution perplexity change {text}")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "Figures: `figures.csv` (every figure of every run, and every verdict)."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    summary = {"runs": [r["run"] for r in runs], "criteria": criteria, "hypothesis": hyp,
               "thresholds": {k: getattr(c, k) for k in c.__dataclass_fields__},
               "plots": [p.name for p in plots], "report": str(out / "report.md")}
    (out / "verdicts.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _lr_section(search: dict) -> list[str]:
    """Every method's pilots (the sensitivity curve) and the rate it trained with."""
    lines = ["## Learning rates", "", f"Pilots of {search['steps']} steps per rate; the lowest "
             f"{search['metric']} at the pilot's end picks each method's rate (the `lr` column above). The "
             f"validation slice is carved from the training side: selection never reads the test set the tables "
             f"above are scored on. Beside each pilot's perplexity: its original-text perplexity and retention "
             f"benchmark score, where the run evaluates them.", "",
             "| method | pilots: rate → perplexity (original ppl, retention) | picked |", "|---|---|---|"]

    def point(c: dict) -> str:
        extra = [f"{c[k]:.4g}" if c.get(k) is not None else "–" for k in ("original_ppl", "retention")]
        return f"{c['lr']:.3g} → {c['ppl']:.4g}" + (f" ({', '.join(extra)})" if extra != ["–", "–"] else "")
    for label, m in search["methods"].items():
        curve = ", ".join(point(c) for c in sorted(m["curve"], key=lambda c: c["lr"]))
        edge = " (at the grid's edge: widen the search)" if m.get("edge") else ""
        lines.append(f"| {label} | {curve} | **{m['lr']:.3g}**{edge} |")
    return lines + [""]


def headline_table(summary: dict, out: Path) -> str:
    """The headline of report.md: the learning and forgetting tables and the verdicts, for printing."""
    text = (Path(out) / "report.md").read_text()
    head, _, rest = text.partition("## Cost")
    verdicts = "## Verdicts" + rest.partition("## Verdicts")[2]
    return head + verdicts.split("## Plots")[0]
