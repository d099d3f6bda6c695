"""Response quality: greedy answers to held-out prompts, ROUGE-L against the references, the references'
likelihood, and the optional pairwise judge (eval/quality.py)."""
from __future__ import annotations

from ..quality import response_quality
from . import register_evaluation
from .base import EvalContext, Evaluation


@register_evaluation
class ResponseQuality(Evaluation):
    name = "quality"
    summary = ("greedy answers to `eval.quality_prompts` held-out prompts: ROUGE-L, reference NLL per token, "
               "the optional judge (`eval.judge`) against the step-0 answers")

    def run(self, ctx: EvalContext, model) -> dict:
        return response_quality(model, ctx.tokenizer, ctx.pairs(), ctx.ecfg, ctx.evals_dir, ctx.step)
