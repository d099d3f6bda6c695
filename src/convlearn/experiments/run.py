"""`convlearn train`: a run built from its config, with the evaluation suites at the scheduled steps, then the
forgetting analysis (and, for a stream, the online adaptation analysis) over what they wrote. `run_training` is
the one train-this-config call: it returns the run's `RunSummary`, or raises `RunStopped` when training had to
stop."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..eval.adaptation import write_adaptation
from ..eval.evaluations import check_suites
from ..eval.forgetting import write_analysis
from ..eval.records import load_evals
from ..eval.suites import RunEvaluator, ScheduledEvaluator
from ..train import model_folder
from ..train.build import build_trainer, set_up_run
from ..train.checkpoint import link_final
from ..train.summary import RunSummary

if TYPE_CHECKING:
    from ..config import RunConfig


def run_training(cfg: RunConfig, out: str | Path | None = None, max_steps: int | None = None,
                 resume: bool = False) -> RunSummary:
    check_suites(cfg.eval)  # an unknown evaluation in eval.suites: exit 2 before the data is prepared
    setup = set_up_run(cfg, Path(out or cfg.output_dir), resume)
    try:
        evaluator = ScheduledEvaluator(RunEvaluator.for_run(cfg, setup.tokenizer, setup.spec, setup.prepared,
                                                            setup.out),
                                       cfg.eval, max_steps or cfg.train.max_steps) if setup.dist.main else None
        trainer = build_trainer(setup, evaluator, max_steps)
        summary = trainer.run()
        if not setup.dist.main:
            return summary
        summary.final_model = str(link_final(setup.out))
        summary.data = {k: setup.prepared.meta["data"][k] for k in ("conversations", "documents", "heldout",
                                                                     "skipped")}
        method = trainer.trainable.method
        if method.adapter and cfg.method.save_merged:
            method.merged(trainer.trainable).save_pretrained(setup.out / "merged")
            model_folder.complete(setup.out / "merged", setup.tokenizer, setup.spec)
        summary.forgetting = write_analysis(setup.out, cfg.eval).get("flags", {})
        if cfg.train.order != "shuffled":  # a stream: measure adaptation at its domain switches
            adapt = write_adaptation(setup.out, cfg.eval.adaptation_levels, cfg.eval.criteria.confidence)
            if adapt is not None:
                summary.adaptation = {k: v for k, v in adapt.items() if k.startswith("steps_to_")}
                steps = [r.step for r in load_evals(setup.out)]
                phases = [{"domain": p["domain"], "end_step": max(s for s in steps if s <= p["end"])}
                          for p in adapt["phases"] if any(s <= p["end"] for s in steps)]
                summary.backward_transfer = write_analysis(setup.out, cfg.eval, phases).get(
                    "backward_transfer")
        (setup.out / "summary.json").write_text(json.dumps(summary.to_json(), indent=2))
        return summary
    finally:
        setup.dist.close()
