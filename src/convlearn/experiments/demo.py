"""`convlearn demo`: the whole story offline on CPU, deterministic for its seed.

1. build a tiny Qwen2 twin; 2. pretrain it on Python's docstrings (the "original distribution", so there is
something to forget); 3. make knowledge probes (facts that appear nowhere else) and a docstring benchmark in
MMLU's schema; 4. evaluate at step 0 and continue training with AdamW, LoRA, GaLore and GaLore + 10% replay on
the same stream of chatterbot + probe conversations; 5. write the report (tables, plots, verdicts) and print
its headline table.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..config import load_config
from ..data.docstring_mmlu import write_docstring_mmlu
from ..data.probes import write_probes
from ..errors import UserError
from ..tiny import build_tiny_model
from ..train.checkpoint import MODEL_DIR, checkpoint_path
from .report import headline_table, write_report
from .run import run_training
from .sweep import PACKAGED, load_sweep, run_sweep


def pretrain_base(out: Path, tiny: Path, steps: int) -> Path:
    """The base model: the twin trained on docstrings with our own loop, saved with its tokenizer."""
    base = out / "base"
    if (base / "config.json").is_file():
        return base
    cfg = load_config(None, [
        f"model.name={tiny}", "data.sources=[{path: python-docstrings, format: text}]", "data.heldout_fraction=0.1",
        f"data.cache_dir={out / 'cache'}", "render.max_seq_len=128", "method.name=adamw", f"train.max_steps={steps}",
        "train.batch_size=16", "train.lr=0.003", "train.warmup_steps=20", "train.save_every=0",
        "eval.schedule=[]", "eval.final_suite=null", "logging.progress=false"])
    run_dir = out / "pretrain"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_training(cfg, run_dir)
    shutil.copytree(checkpoint_path(run_dir, steps) / MODEL_DIR, base)
    for f in tiny.iterdir():  # the tokenizer travels with the weights
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, base / f.name)
    return base


def run_demo(out: str | Path, pretrain_steps: int = 400, train_steps: int = 200) -> dict:
    """The full demo (~5.5 min on 2 cores); `convlearn demo --quick` shortens both phases for CI."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tiny = out / "tiny-qwen2"
    print(f"[1/5] tiny Qwen2 twin -> {tiny}", flush=True)
    if not (tiny / "config.json").is_file():
        build_tiny_model("qwen2", tiny, seed=0)
    print(f"[2/5] pretraining it on Python docstrings ({pretrain_steps} steps) ...", flush=True)
    base = pretrain_base(out, tiny, pretrain_steps)
    print("[3/5] knowledge probes and a docstring benchmark in MMLU's schema ...", flush=True)
    write_probes(out / "probes", n=12, seed=0, mentions=4)
    write_docstring_mmlu(out / "mmlu")
    print(f"[4/5] continual training on chatterbot + probe conversations: AdamW, LoRA, GaLore, GaLore + 10% "
          f"replay ({train_steps} steps each) ...", flush=True)
    # the shortened (CI) demo also evaluates on less: fewer original documents and MMLU questions
    quick_evals = ", eval.original.limit=600, eval.mmlu_quick_per_subject=10" if train_steps < 100 else ""
    sweep_file = out / "demo_sweep.yaml"
    base_cfg = (PACKAGED / "tiny" / "base.yaml").read_text().replace("runs/demo/", f"{out}/")
    (out / "base.yaml").write_text(base_cfg)
    sweep_file.write_text(f"""name: demo
experiment: optimizers
hypothesis: GaLore learns like AdamW with LoRA-like memory
base: base.yaml
set: [train.max_steps={train_steps}, "data.cache_dir={out / 'cache'}"{quick_evals}]
runs:
  - {{name: adamw, set: [method.name=adamw, train.lr=0.001]}}
  - {{name: lora-r16, set: [method.name=lora, method.lora_rank=16, method.lora_alpha=32, train.lr=0.003]}}
  - {{name: galore-r32, set: [method.name=galore, method.rank=32, method.layerwise=true]}}
  - {{name: galore-r32-replay10, set: [method.name=galore, method.rank=32, method.layerwise=true,
                                      replay.ratio=0.1]}}
""")
    result = run_sweep(sweep_file, out / "runs")
    failed = {k: v for k, v in result["runs"].items() if v not in (0, "skipped")}
    if failed:
        raise UserError(f"demo runs failed: {failed} (see {out / 'runs'}/<run>/train.log)")
    print("[5/5] report ...", flush=True)
    sweep = load_sweep(sweep_file)
    summary = write_report([out / "runs" / r.name for r in sweep.runs], out / "report", "optimizers",
                           "convlearn demo: continual learning of a tiny Qwen2 from conversations",
                           sweep.hypothesis)
    print(headline_table(summary, out / "report"))
    print(f"report: {summary['report']} (plots and figures.csv beside it); done in "
          f"{time.perf_counter() - t0:.0f} s")
    return summary
