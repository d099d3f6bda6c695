"""Perplexity of the held-out conversations: overall (conversation_ppl) and per domain (domain_ppl). Both read
the same per-sample losses, computed once per run() call (EvalContext.heldout_losses)."""
from __future__ import annotations

from ..perplexity import figures, grouped_figures, per_sample_json
from . import register_evaluation
from .base import EvalContext, Evaluation

NO_HELDOUT = {"skipped": "no held-out samples"}


@register_evaluation
class ConversationPerplexity(Evaluation):
    name = "conversation_ppl"
    summary = ("held-out conversation perplexity and bits per byte, over all tokens and over assistant tokens, "
               "with per-sample losses (the paired intervals need them)")

    def run(self, ctx: EvalContext, model) -> dict:
        if not len(ctx.heldout):
            return dict(NO_HELDOUT)
        per = ctx.heldout_losses(model)
        ids = [f"{c}#{w}" for c, w in zip(ctx.heldout["conversation_id"], ctx.heldout["window"])]
        return {**figures(per), "per_sample": per_sample_json(per, ids)}


@register_evaluation
class DomainPerplexity(Evaluation):
    name = "domain_ppl"
    summary = "the same held-out perplexity per group of `eval.domain_by` (and of `eval.domain_map`, as `mapped`)"

    def run(self, ctx: EvalContext, model) -> dict:
        if not len(ctx.heldout):
            return dict(NO_HELDOUT)
        per = ctx.heldout_losses(model)
        groups = {key: grouped_figures(per, [str(x) for x in ctx.heldout[key]]) for key in ctx.ecfg.domain_by}
        if ctx.domain_map is not None:
            groups["mapped"] = grouped_figures(per, [ctx.domain_map.get(c, "unmapped")
                                                     for c in ctx.heldout["conversation_id"]])
        return {"groups": groups}
