"""`convlearn train`: the training loop with the evaluation hook plugged in."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..eval.perplexity import perplexity_figures, sample_losses


def heldout_evaluator(trainer):
    """Held-out loss / perplexity / bits per byte at the scheduled steps -> evals/step-N.json."""
    heldout = trainer.prepared.dataset("heldout")
    pad = trainer.stream.pad_id
    limit = trainer.cfg.train.eval_samples

    def evaluate(model, step: int) -> dict:
        started = time.perf_counter()
        figures = {"heldout": perplexity_figures(sample_losses(model, heldout, pad, trainer.cfg.train.batch_size,
                                                               limit))} if len(heldout) else {}
        record = {"step": step, "suite": "heldout_loss", **figures,
                  "seconds": round(time.perf_counter() - started, 3)}
        evals = trainer.out / "evals"
        evals.mkdir(parents=True, exist_ok=True)
        (evals / f"step-{step}.json").write_text(json.dumps(record, indent=2))
        return {k: v for k, v in figures.get("heldout", {}).items() if k != "samples"}

    return evaluate


def run_training(cfg, out: str | Path | None = None, max_steps: int | None = None, resume: bool = False) -> dict:
    from ..train.loop import Trainer
    trainer = Trainer(cfg, Path(out or cfg.output_dir), max_steps=max_steps, resume=resume,
                      evaluator_factory=heldout_evaluator)
    try:
        return trainer.run()
    finally:
        trainer.dist.close()
