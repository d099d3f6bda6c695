"""`convlearn demo`: the research plan's four experiments at tiny scale, offline on CPU, deterministic for their
seeds, each hypothesis judged with its interval.

1. build a tiny Qwen2 twin; 2. pretrain it (at PRETRAIN_LR) on Python docstrings, the "original distribution"
   there is to forget, and on the same docstrings as chats, so the base knows the chat format before it meets
   conversations; 3. make knowledge probes (invented facts, distractors taught as often, held-out phrasings and a
   mismatched-subject control) and the retention benchmark (docstring continuations in HellaSwag's schema);
4. experiment 1 (optimizers): each method's rate picked by pilots scored on a validation slice of the training
   side, every rate below the base's pretraining rate; then AdamW, LoRA and memory-optimised GaLore on the same
   stream of chatterbot + probe conversations; 5. experiments 2-4 at the rate experiment 1 picked for GaLore:
   data scaling (three sizes, one held-out set), online adaptation (a stream ordered by topic), replay (0 and
   10%, two seeds each); 6. a report per experiment (tables, plots, verdicts) and `demo.md`: the four
   hypotheses' verdicts and the probe figures beside their control.

The experiments are the packaged `tiny/*.yaml` sweeps; the demo only shortens them (`_SHORTEN`).
"""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import yaml

from ..data.docstring_cloze import write_docstring_cloze
from ..data.probes import write_probes
from ..errors import UserError
from ..experiments.report import write_report
from ..experiments.sweep import PACKAGED, load_sweep, run_sweep
from ..learn.canary import exposure_table
from .base import PRETRAIN_DOCUMENTS, pretrain_base, tiny_twin

EXPERIMENTS = ("optimizers", "data_scaling", "online", "replay")
DIRS = {"tiny": "demo", "real": "real"}  # the folder each tier's packaged configs name (runs/<dir>/...)
# Experiment 1 at demo size: one point of each kind of method (the memory-optimised GaLore is the point whose rate
# experiments 2-4 take).
DEMO_METHODS = ("adamw", "lora-r16", "galore-r32-lw-proj")


def _sweep_file(out: Path, name: str, sets: list[str], tier: str = "tiny", **extra) -> Path:
    """The packaged sweep `tier`/`name`, based on the demo's base.yaml, with the demo's settings appended (last, so
    they win over the experiment's own)."""
    spec = {**yaml.safe_load((PACKAGED / tier / f"{name}.yaml").read_text()), **extra}
    spec["base"] = str(out / "base.yaml")
    spec["set"] = [o.replace(f"runs/{DIRS[tier]}/", f"{out}/") for o in spec.get("set", [])] + sets
    if spec.get("lr_from"):
        spec["lr_from"] = str(out / "runs" / "optimizers" / "lr_choice.json")
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_packaged(out: Path, name: str, sets: list[str], tier: str = "tiny", extra_runs: tuple[Path, ...] = (),
                 **extra) -> dict:
    """Run the packaged sweep `tier`/`name` (one process per run) and write its report over its runs and
    `extra_runs` (an arm another experiment already ran)."""
    sweep_file = _sweep_file(out, name, sets, tier, **extra)
    root = out / "runs" / name
    result = run_sweep(sweep_file, root)
    failed = {k: v for k, v in result["runs"].items() if v not in (0, "skipped")}
    if failed:
        raise UserError(f"demo {name} runs failed: {failed} (see {root}/<run>/train.log)")
    sweep = load_sweep(sweep_file)
    scale = "at tiny scale" if tier == "tiny" else "on real weights (Gemma-3-270M)"
    return write_report([*extra_runs, *(root / r.name for r in sweep.runs)], root / "report", sweep.experiment,
                        f"convlearn demo, experiment {EXPERIMENTS.index(name) + 1} ({name}) {scale}",
                        sweep.hypothesis, lr_choice=root / "lr_choice.json")



def run_demo(out: str | Path, pretrain_steps: int = 400, train_steps: int = 150, pilot_steps: int = 40,
             quick: bool = False) -> dict:
    """The full demo (about 9 min on 2 cores); `quick` (`convlearn demo --quick`) shortens every phase for CI."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # the pilots run in this process: their lm-eval progress bars would bury the demo's own lines
    os.environ.setdefault("TQDM_DISABLE", "1")
    t0 = time.perf_counter()
    print(f"[1/6] tiny Qwen2 twin -> {out / 'tiny-qwen2'}", flush=True)
    tiny = tiny_twin(out)
    print(f"[2/6] pretraining it on Python docstrings and docstring chats ({pretrain_steps} steps) ...", flush=True)
    pretrain_base(out, tiny, pretrain_steps)
    print("[3/6] knowledge probes (distractors taught as often, held-out phrasings, a control) and the docstring "
          "retention benchmark ...", flush=True)
    write_probes(out / "probes", n=20, seed=0, mentions=4)
    canaries = write_canaries(out / "canaries")
    write_docstring_cloze(out / "retention", questions=100 if quick else 400, documents=PRETRAIN_DOCUMENTS)
    (out / "base.yaml").write_text((PACKAGED / "tiny" / "base.yaml").read_text().replace("runs/demo/", f"{out}/"))
    common = [f"data.cache_dir={out / 'cache'}", "logging.tensorboard=false"] + (
        ["eval.heldout_samples=64", "eval.original.limit=150"] if quick else [])
    grid = yaml.safe_load((PACKAGED / "tiny" / "optimizers.yaml").read_text())["grid"]
    grid["method"] = [p for p in grid["method"] if p["name"] in DEMO_METHODS]
    print(f"[4/6] experiment 1: learning-rate pilots ({pilot_steps} steps per rate, scored on a validation slice), "
          f"then {', '.join(DEMO_METHODS)} ({train_steps} steps each) ...", flush=True)
    reports = {"optimizers": run_packaged(out, "optimizers", [*common, f"train.max_steps={train_steps}"], grid=grid,
                                  lr_search={"factors": [0.3, 1, 3], "steps": pilot_steps})}
    print("      canary exposure: the base (v0) and experiment 1's AdamW run, each canary against v0 ...",
          flush=True)
    canary_report = canary_exposures(out, canaries)
    print("[5/6] experiments 2-4 at the rate experiment 1 picked: data scaling, online adaptation, replay ...",
          flush=True)
    # quick: the same sizes in fewer, larger steps; the online stream cut to its first topics
    reports["data_scaling"] = run_packaged(out, "data_scaling", common + (["train.batch_size=16"] if quick else []))
    reports["online"] = run_packaged(out, "online", common + (["data.max_conversations=300"] if quick else []))
    grid = yaml.safe_load((PACKAGED / "tiny" / "replay.yaml").read_text())["grid"]
    grid["replay"] = [p for p in grid["replay"] if p["name"] in ("r0", "r10")]
    reports["replay"] = run_packaged(out, "replay", [*common, f"train.max_steps={train_steps}"], grid=grid)
    print("[6/6] reports ...", flush=True)
    summary = demo_summary(out, reports, canary_report)
    (out / "demo.md").write_text(summary)
    print(summary)
    print(f"reports: {out / 'runs'}/<experiment>/report/report.md; this summary: {out / 'demo.md'}; done in "
          f"{time.perf_counter() - t0:.0f} s")
    return {"reports": reports, "summary": str(out / "demo.md")}


def write_canaries(folder: Path, digits: int = 6) -> list:
    """Secrets planted in the training conversations every experiment reads (tiny/base.yaml): consented ones of
    both forms (the e-mail form is scrubbed before training) 4 times, a positive control 40 times, never-seen
    controls; the unconsented group of the live demo has no meaning offline and is left out."""
    from ..data.builtin import chatterbot_dir
    from ..learn.canary import make_canaries
    canaries = [c for c in make_canaries(seed=2, per_group=1, insertions=4, control_insertions=40, digits=digits)
                if c.group != "unconsented"]
    openers = list(dict.fromkeys(c[0] for f in sorted(chatterbot_dir().glob("*.yml"))
                                 for c in yaml.safe_load(f.read_text())["conversations"] if c and len(c[0]) < 80))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in canaries:
        for j in range(c.insertions if c.group != "never_seen" else 0):
            opener = openers[(j * 31 + len(rows)) % len(openers)]  # distinct texts: dedup keeps every one
            rows.append({"conversation_id": f"{c.id}-{j}", "model": "canary", "language": "English", "turn": 1,
                         "redacted": False, "openai_moderation": [],
                         "conversation": [{"role": "user", "content": f"{opener} {c.text()}"},
                                          {"role": "assistant", "content": "Noted."}]})
    (folder / "canary_conversations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return canaries


def canary_exposures(out: Path, canaries: list, base: Path | None = None) -> dict:
    """Exposure of every canary on the base (v0; default `out`/base) and on experiment 1's AdamW model, judged
    against v0."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..config import load_config
    from ..data.prepare import renderer_for
    from ..learn.canary import exposures, prompt_renderer
    from ..models import load_tokenizer
    cfg = load_config(out / "base.yaml")
    tok = load_tokenizer(cfg.model.name)
    prompt_for = prompt_renderer(renderer_for(cfg, tok))
    report = {}
    for name, folder in (("v0", base or out / "base"), ("adamw", out / "runs" / "optimizers" / "adamw" / "final")):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        report[name] = exposures(model, tok, prompt_for, canaries, baseline=report.get("v0"))
    (out / "canaries" / "exposure.json").write_text(json.dumps(report, indent=1))
    return report


def demo_summary(out: Path, reports: dict, canaries: dict | None = None,
                 title: str = "the four hypotheses at tiny scale") -> str:
    """The hypotheses' verdicts (those in `reports`), experiment 1's probe figures beside their control, and the
    canaries."""
    lines = [f"# convlearn demo: {title}", "",
             "| experiment | hypothesis | verdict | figure |", "|---|---|---|---|"]
    for name in [e for e in EXPERIMENTS if e in reports]:
        hyp = reports[name]["hypothesis"]
        for point, v in hyp.get("verdicts", {}).items():
            lines.append(f"| {EXPERIMENTS.index(name) + 1}. {name} ({point}) | {hyp.get('statement', '')} | "
                         f"**{v['verdict']}** | {v['figure']} |")
    lines += ["", "## Knowledge probes (experiment 1): accuracy beside its control", "",
              "Likelihood choice of the true answer among other facts' answers taught as often, on phrasings no "
              "conversation used; control: the same phrasings about another subject; lift: accuracy - control per "
              "fact, with its interval over facts and a sign-flip p-value.", "",
              "| run | chance | verbatim | held-out, step 0 | held-out, end | control | lift [interval] | p |",
              "|---|---|---|---|---|---|---|---|"]
    figures: dict = {}
    with open(out / "runs" / "optimizers" / "report" / "figures.csv", newline="") as fh:
        for run, key, value in list(csv.reader(fh))[1:]:
            figures.setdefault(run, {})[key] = value
    f = lambda v: "–" if v in (None, "") else f"{float(v):.2f}"  # noqa: E731
    for run, fig in figures.items():
        if "probe_mc_final" not in fig:
            continue
        lines.append(f"| {run} | {f(fig.get('probe_chance'))} | {f(fig.get('probe_mc_verbatim_final'))} | "
                     f"{f(fig.get('probe_mc_step0'))} | {f(fig.get('probe_mc_final'))} | "
                     f"{f(fig.get('probe_control_final'))} | {f(fig.get('probe_lift'))} "
                     f"[{f(fig.get('probe_lift_low'))}, {f(fig.get('probe_lift_high'))}] | "
                     f"{f(fig.get('probe_lift_p'))} |")
    if canaries:
        c = canaries["adamw"]
        lines += ["", "## Canaries (experiment 1's AdamW model against the base)", "",
                  f"Exact ranks among all {c['space']:,} secrets; flagged when the gain over v0 reaches "
                  f"{c['bound_bits']:.1f} bits = log2(canaries / alpha), alpha {c['alpha']} family-wise (a never-seen "
                  f"secret passes it with probability at most alpha).", "",
                  *exposure_table(c)]
    (out / "demo.json").write_text(json.dumps({**{k: r["hypothesis"] for k, r in reports.items()},
                                               "canaries": canaries}, indent=1, default=str))
    return "\n".join(lines) + "\n"
