"""`convlearn demo`: the whole story offline on CPU, deterministic for its seed.

1. build a tiny Qwen2 twin; 2. pretrain it on Python docstrings (the "original distribution", so there is
something to forget); 3. make knowledge probes (facts that appear nowhere else, with held-out phrasings) and the
retention benchmark (continuations of the docstrings pretraining read, in HellaSwag's schema); 4. pick each
method's learning rate with short pilots, then continue training with AdamW, LoRA, layer-wise GaLore and
layer-wise GaLore + 10% replay on the same stream of chatterbot + probe conversations, evaluating at step 0 and
at the end; 5. write the report (tables, plots, verdicts with intervals) and print its headline table.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..data.docstring_cloze import write_docstring_cloze
from ..data.probes import write_probes
from ..errors import UserError
from ..experiments.report import headline_table, write_report
from ..experiments.sweep import PACKAGED, load_sweep, run_sweep
from .base import PRETRAIN_DOCUMENTS, pretrain_base, tiny_twin


def run_demo(out: str | Path, pretrain_steps: int = 400, train_steps: int = 200, pilot_steps: int = 60) -> dict:
    """The full demo (about 8 min on 2 cores); `convlearn demo --quick` shortens every phase for CI."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[1/5] tiny Qwen2 twin -> {out / 'tiny-qwen2'}", flush=True)
    tiny = tiny_twin(out)
    print(f"[2/5] pretraining it on Python docstrings ({pretrain_steps} steps) ...", flush=True)
    pretrain_base(out, tiny, pretrain_steps)
    print("[3/5] knowledge probes (with held-out phrasings) and the docstring retention benchmark ...", flush=True)
    write_probes(out / "probes", n=12, seed=0, mentions=4)
    quick = train_steps < 100  # the shortened (CI) demo also evaluates on less
    write_docstring_cloze(out / "retention", questions=100 if quick else 400, documents=PRETRAIN_DOCUMENTS)
    print(f"[4/5] learning-rate pilots ({pilot_steps} steps at 0.3x / 1x / 3x each method's rate), then continual "
          f"training on chatterbot + probe conversations: AdamW, LoRA, layer-wise GaLore, layer-wise GaLore + 10% "
          f"replay ({train_steps} steps each) ...", flush=True)
    quick_evals = ", eval.heldout_samples=64, eval.original.limit=150" if quick else ""
    sweep_file = out / "demo_sweep.yaml"
    base_cfg = (PACKAGED / "tiny" / "base.yaml").read_text().replace("runs/demo/", f"{out}/")
    (out / "base.yaml").write_text(base_cfg)
    sweep_file.write_text(f"""name: demo
experiment: optimizers
hypothesis: GaLore learns like AdamW with LoRA-like memory
base: base.yaml
lr_search: {{factors: [0.3, 1, 3], steps: {pilot_steps}}}
set: [train.max_steps={train_steps}, "data.cache_dir={out / 'cache'}", logging.tensorboard=false{quick_evals}]
runs:
  - {{name: adamw, set: [method.name=adamw, train.lr=0.003]}}
  - {{name: lora-r16, set: [method.name=lora, method.lora_rank=16, method.lora_alpha=32, train.lr=0.01]}}
  - {{name: galore-r32, set: [method.name=galore, method.rank=32, method.layerwise=true, train.lr=0.01]}}
  - {{name: galore-r32-replay10, set: [method.name=galore, method.rank=32, method.layerwise=true, train.lr=0.01,
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
                           sweep.hypothesis, lr_choice=out / "runs" / "lr_choice.json")
    print(headline_table(summary, out / "report"))
    print(f"report: {summary['report']} (plots and figures.csv beside it); done in "
          f"{time.perf_counter() - t0:.0f} s")
    return summary
