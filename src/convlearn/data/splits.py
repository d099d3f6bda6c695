"""Which side of a split a record is on: held-out conversations for evaluation, and the rule that keeps
replayed original-distribution text apart from the text the forgetting evaluation scores.

Every split is a hash of a record's key, so the same record is on the same side in every run, for every source,
and for every reader of the rule (data preparation, replay and evaluation all ask this module).
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from .records import Conversation, Document

if TYPE_CHECKING:
    from ..config import RunConfig

# Share of an original-distribution text source kept for evaluation when replay draws from the same source.
ORIGINAL_HELDOUT = 0.1


def split_key(rec: Conversation | Document) -> str:
    """What decides the held-out side: the conversation id, or its group (an OpenAssistant tree, so that
    paths sharing a prompt never straddle the split)."""
    return str(rec.meta.get("split_group") or rec.id)


def is_heldout(key: str, fraction: float) -> bool:
    """Deterministic: the same id is on the same side in every run and for every source."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:8], "big")
    return h / 2**64 < fraction


def is_validation(key: str, fraction: float) -> bool:
    """The validation slice of the training side: another hash of the same key, so it is independent of the
    held-out (test) split and the same in every pilot."""
    return is_heldout("validation:" + key, fraction)


def replay_shares_eval_source(cfg: RunConfig) -> bool:
    """Replay and the original-distribution evaluation read the same text: split it so they never overlap."""
    a, b = cfg.replay.original, cfg.eval.original
    if a is None or b is None or a.path != b.path:
        return False
    local = a.path in ("python-docstrings", "chatterbot") or Path(a.path).exists()
    return local or (a.subset, a.split) == (b.subset, b.split)  # split/subset only name parts of hub datasets


def replay_data_config(cfg: RunConfig):
    """The DataConfig replay prepares its original-distribution text with: every document of the source, less
    the share the evaluation scores when both read the same text (that share lands on the held-out side)."""
    heldout = ORIGINAL_HELDOUT if replay_shares_eval_source(cfg) else 0.0
    return dataclasses.replace(cfg.data, sources=[cfg.replay.original], max_conversations=None,
                               heldout_fraction=heldout)


def original_eval_documents(cfg: RunConfig, docs: list[Document]) -> list[Document]:
    """The original-distribution documents the evaluation scores: all of them, or, when replay reads the same
    text, only the held-out share replay never draws (at any replay ratio, so runs stay comparable)."""
    if not replay_shares_eval_source(cfg):
        return docs
    return [d for d in docs if is_heldout(split_key(d), ORIGINAL_HELDOUT)]
