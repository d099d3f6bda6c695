"""Knowledge probes: facts only the training conversations hold, asked verbatim and in held-out phrasings."""
from __future__ import annotations

from ..probes import load_probes, probe_figures
from . import register_evaluation
from .base import EvalContext, Evaluation


@register_evaluation
class KnowledgeProbes(Evaluation):
    name = "probes"
    summary = "`eval.probes`: answer contained in the greedy answer, multiple-choice log-likelihood accuracy"

    def run(self, ctx: EvalContext, model) -> dict:
        if not ctx.ecfg.probes:
            return {"skipped": "eval.probes is null"}
        return probe_figures(model, ctx.tokenizer, load_probes(ctx.ecfg.probes), ctx.question_prompt,
                             ctx.ecfg.batch_size, ctx.ecfg.probe_max_new_tokens)
