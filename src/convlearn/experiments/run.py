"""`convlearn train`: the training loop with the evaluation suites plugged in at the scheduled steps."""
from __future__ import annotations

from pathlib import Path

from ..eval.adaptation import write_adaptation
from ..eval.forgetting import write_analysis
from ..eval.suites import RunEvaluator, headline, schedule_for


class EvalHook:
    """The loop's evaluator: runs the scheduled suite on the live model, returns its headline scalars."""

    def __init__(self, trainer):
        cfg = trainer.cfg
        self.evaluator = RunEvaluator(cfg, trainer.tokenizer, trainer.spec, trainer.prepared, trainer.out)
        self.schedule = schedule_for(cfg.eval, trainer.max_steps)

    def __call__(self, model, step: int) -> dict:
        return headline(self.evaluator.run(model, step, self.schedule[step]))


def run_training(cfg, out: str | Path | None = None, max_steps: int | None = None, resume: bool = False) -> dict:
    from ..train.loop import Trainer
    trainer = Trainer(cfg, Path(out or cfg.output_dir), max_steps=max_steps, resume=resume,
                      evaluator_factory=EvalHook)
    try:
        summary = trainer.run()
        if trainer.dist.main:
            summary["forgetting"] = write_analysis(trainer.out, cfg.eval).get("flags", {})
            if cfg.train.order != "shuffled":  # a stream: measure adaptation at its domain switches
                adapt = write_adaptation(trainer.out, cfg.eval.adaptation_levels)
                if adapt is not None:
                    summary["adaptation"] = {k: v for k, v in adapt.items() if k.startswith("steps_to_")}
                    steps = sorted(trainer.evaluate.schedule) if trainer.evaluate else []
                    phases = [{"domain": p["domain"], "end_step": max(s for s in steps if s <= p["end"])}
                              for p in adapt["phases"] if any(s <= p["end"] for s in steps)]
                    summary["backward_transfer"] = write_analysis(trainer.out, cfg.eval, phases).get(
                        "backward_transfer")
        return summary
    finally:
        trainer.dist.close()
