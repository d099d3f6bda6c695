"""What an evaluation is: one object per named item of `eval.suites`, run on a model by `RunEvaluator.run`.

An `Evaluation` gets an `EvalContext` (what one run() call knows: the held-out samples, the renderer, the
tokenizer, the `eval` section, the step, and the inputs that are built once per evaluator and kept) and returns
the dict that `evals/step-N.json` holds under its name. It may also refuse, before any work, a configuration it
cannot honour offline. The evaluator only calls these; it does not switch on an evaluation's name.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..perplexity import sample_losses


@dataclass
class EvalContext:
    """One `RunEvaluator.run` call as its evaluations see it. `pairs`, `original` and `benchmarks` are built on
    first use and kept by the evaluator across calls (they do not depend on the model); the held-out losses are
    kept for this call only (the model changes between calls)."""
    ecfg: Any                                 # the run's `eval` config section
    tokenizer: Any
    renderer: Any                             # data.render renderer of the run's chat template
    heldout: Any                              # held-out samples (datasets.Dataset), at most eval.heldout_samples
    pad: int                                  # pad id of the batched passes
    out: Path                                 # the run (or evaluation) directory
    evals_dir: Path                           # out/evals: step-N.json, and what an evaluation writes beside it
    step: int
    domain_map: dict[str, str] | None         # eval.domain_map read: conversation id -> domain
    pairs: Callable[[], list[dict]]           # held-out (prompt, reference) pairs, at most eval.quality_prompts
    original: Callable[[], Any]               # original-distribution documents, tokenized (datasets.Dataset)
    benchmarks: Callable[[], Any]             # eval.benchmarks.Benchmarks of the `eval` section
    _heldout_losses: dict | None = field(default=None, repr=False)

    def heldout_losses(self, model) -> dict:
        """Per-sample losses of the held-out samples under `model`: one pass per run() call, shared by every
        evaluation that reads them (conversation_ppl and domain_ppl)."""
        if self._heldout_losses is None:
            self._heldout_losses = sample_losses(model, self.heldout, self.pad, self.ecfg.batch_size)
        return self._heldout_losses

    def question_prompt(self, question: str) -> str:
        """A user question as the chat template's generation prompt."""
        msgs = self.renderer.messages_from([{"role": "user", "content": question}])
        return self.renderer.generation_prompt(msgs)


class Evaluation:
    name: ClassVar[str]                       # its item name in eval.suites and its key in step-N.json
    summary: ClassVar[str] = ""               # one line for the docs' Evaluations table

    def check_offline(self, ecfg) -> None:
        """Raise UserError (naming the key) when the hub is offline and this evaluation would need it."""

    def check(self, ecfg) -> str | None:
        """What this evaluation needs of the `eval` section that it lacks, online or not (None: nothing): a
        suite holding it fails when the config is checked, not at the run's first evaluation."""
        return None

    def run(self, ctx: EvalContext, model) -> dict:
        raise NotImplementedError
