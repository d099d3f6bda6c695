"""Perplexity of original-distribution text (C4 / RedPajama style): the forgetting figure."""
from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from ..perplexity import figures, per_sample_json, sample_losses
from . import register_evaluation
from .base import EvalContext, Evaluation

# sources every machine has (data/builtin.py): no file, no hub
BUILTIN_SOURCES = ("chatterbot", "python-docstrings")


@register_evaluation
class OriginalPerplexity(Evaluation):
    name = "original_ppl"
    summary = "perplexity of `eval.original` (text of the pretraining distribution), with per-document losses"

    def check_offline(self, ecfg) -> None:
        original = ecfg.original
        if original is not None and not Path(original.path).exists() and original.path not in BUILTIN_SOURCES:
            raise UserError(f"eval.original.path: the hub is offline and {original.path!r} is not a local file "
                            "(use a local C4/RedPajama-style file or `python-docstrings`)")

    def run(self, ctx: EvalContext, model) -> dict:
        if ctx.ecfg.original is None:
            return {"skipped": "eval.original is null"}
        docs = ctx.original()
        per = sample_losses(model, docs, ctx.pad, ctx.ecfg.batch_size)
        return {**figures(per), "source": ctx.ecfg.original.path, "per_sample": per_sample_json(per, docs["doc_id"])}
