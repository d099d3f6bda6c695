"""From the store to a round's data: consented conversations read once, in arrival order, through the same
per-record steps as every offline source (data/stream.py RecordSteps: length cap, language, filters, dedup, the
scrubber), with the poisoning guards and the gate's held-out slice. Nothing leaves this module unscrubbed: the
records a round writes (convlearn's native format) hold scrubbed text only, and they are trained on as they are.

A conversation continued since it was last read comes back whole with `first_trained` set: its earlier messages
are context for the new ones and are not trained on again (data/render.py).
"""
from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.normalize import make_conversation
from ..data.records import Conversation, DataStats, Skip
from ..data.splits import is_heldout
from ..data.stream import RecordSteps
from ..errors import UserError
from .records import IntakeCounts

if TYPE_CHECKING:
    from ..config import RunConfig

# Why the learner set a conversation aside (beside the offline pipeline's SKIP_REASONS).
DROP_REASONS = {
    "key_cap": "more conversations from one API key in a round than learn.per_key_cap",
    "near_duplicate_flood": "a user message (normalized) seen in more than learn.flood_conversations "
                            "conversations of the round",
    "downvoted": "a reply of the conversation got a thumbs-down (learn.drop_downvoted)",
    "moderation": "matches a pattern of learn.blocklist",
}


@dataclass
class Intake:
    """What one read of the store gave: the records to train on (scrubbed, filtered) and the count of every drop."""
    after: int
    upto: int
    records: list[Conversation] = field(default_factory=list)
    read: int = 0
    heldout: int = 0
    drops: Counter = field(default_factory=Counter)
    stats: DataStats = field(default_factory=DataStats)   # the per-record steps' counts (scrubbed, edits)
    keys: Counter = field(default_factory=Counter)

    def counts(self) -> IntakeCounts:
        drops = self.drops + self.stats.skipped
        return IntakeCounts(self.after, self.upto, self.read, len(self.records), self.heldout,
                            dict(sorted(drops.items())), dict(sorted(self.stats.scrubbed.items())),
                            {str(k): v for k, v in self.keys.items()})


def flood_key(text: str) -> str:
    """Text as a flood is recognised: case, punctuation, spacing and digits ignored (a spammer's variants)."""
    return re.sub(r"\d+", "0", " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split()))


class StoreRecords:
    """Store rows -> records through the per-record steps. A store conversation carries no language: it is
    detected from its user text, so `data.languages` applies to it as to sources that label theirs."""

    def __init__(self, cfg: RunConfig, stats: DataStats | None = None):
        self.cfg = cfg
        self.stats = stats if stats is not None else DataStats()
        self.steps = RecordSteps(cfg.data, self.stats, detect_missing_language=True)
        self.patterns = _blocklist(cfg.learn.blocklist)

    def record(self, conv: dict, first_new: int = 0) -> Conversation:
        """One store conversation as a record (raises Skip with the reason it cannot be used)."""
        pairs = [(m["role"], m["content"]) for m in conv["messages"]]
        if max(len(c) for _, c in pairs) > self.cfg.data.max_message_chars:
            raise Skip("message_too_long")  # before normalizing a huge message
        rec = make_conversation(conv["id"], "store", pairs, self.stats.edits, None, "store")
        if first_new:  # a message merged across the boundary by normalization is new (it holds new text)
            before = make_conversation(conv["id"], "store", pairs[:first_new], Counter())
            same = len(before.messages)
            if same and rec.messages[same - 1].content != before.messages[same - 1].content:
                same -= 1
            if same >= len(rec.messages):
                raise Skip("empty", "no new message")
            rec.first_trained = same
        return self.steps(rec)


def read_round(store, cfg: RunConfig, after: int, upto: int, seed: int) -> Intake:
    """The round's training records from the consented conversations with messages in (after, upto]."""
    learn = cfg.learn
    intake = Intake(after, upto)
    records = StoreRecords(cfg, intake.stats)
    per_key: Counter = Counter()
    flood: dict[str, set] = defaultdict(set)
    for conv in store.consented_messages(after, upto):
        intake.read += 1
        if is_heldout(conv["id"], learn.gate_fraction):
            intake.heldout += 1
            continue
        reason = _guard(conv, learn, records.patterns, per_key, flood)
        if reason is not None:
            intake.drops[reason] += 1
            continue
        try:
            rec = records.record(conv, conv["first_new"])
        except Skip as s:
            intake.stats.skip(s.reason)
            continue
        per_key[conv["key_id"]] += 1
        intake.keys[conv["key_id"]] += 1
        intake.records.append(rec)
    return intake


def _guard(conv: dict, learn, patterns: list[re.Pattern], per_key: Counter, flood: dict) -> str | None:
    if per_key[conv["key_id"]] >= learn.per_key_cap:
        return "key_cap"
    if learn.drop_downvoted and conv.get("downvotes"):
        return "downvoted"
    if patterns and any(p.search(m["content"]) for m in conv["messages"] for p in patterns):
        return "moderation"
    new_user = [m["content"] for m in conv["messages"][conv["first_new"]:] if m["role"] == "user"]
    keys = {flood_key(t) for t in new_user if len(t.strip()) >= learn.flood_min_chars}
    flooded = any(len(flood[k]) >= learn.flood_conversations for k in keys)
    for k in keys:
        flood[k].add(conv["id"])
    return "near_duplicate_flood" if flooded else None


def heldout_records(store, cfg: RunConfig, upto: int) -> list[Conversation]:
    """The gate's slice: the most recent held-out consented conversations (whole, scrubbed, filtered)."""
    records = StoreRecords(cfg)
    convs = [c for c in store.consented_messages(0, upto) if is_heldout(c["id"], cfg.learn.gate_fraction)]
    out = []
    for conv in reversed(convs):
        try:
            out.append(records.record(conv))
        except Skip:
            continue
        if len(out) >= cfg.learn.gate_conversations:
            break
    return out


def reservoir_records(store, cfg: RunConfig, trained: list[str], n: int, seed: int, new: list[Conversation]
                      ) -> list[Conversation]:
    """`n` past conversations the current version's lineage was trained on (`trained`: their ids, from the
    rounds' plans; whole, sampled with the round's seed), replayed against forgetting what earlier rounds
    taught. Only conversations that were trained on: one the guards dropped never comes back this way. Deleted
    or withdrawn ones are gone; one that duplicates a new record of the round is left out (the round's dedup
    spans both)."""
    if n <= 0 or not trained:
        return []
    records = StoreRecords(cfg)
    for rec in new:  # so the steps' dedup knows the round's own records
        records.steps.filter.remember(rec)
    rng = random.Random(seed)
    out = []
    for cid in rng.sample(trained, min(n, len(trained))):
        conv = store.conversation(cid)
        if conv is None or not conv["consent"]:
            continue
        try:
            rec = records.record({"id": cid, "messages": [{"role": m["role"], "content": m["content"]}
                                                          for m in conv["messages"]]})
        except Skip:
            continue
        rec.meta["reservoir"] = True
        out.append(rec)
    return out


def _blocklist(path: str | None) -> list[re.Pattern]:
    if not path:
        return []
    p = Path(path)
    if not p.is_file():
        raise UserError(f"learn.blocklist: no such file {p}")
    out = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            try:
                out.append(re.compile(line.strip(), re.I))
            except re.error as e:
                raise UserError(f"learn.blocklist: {p}:{i}: not a regular expression ({e})") from None
    return out
