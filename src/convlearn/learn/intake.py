"""From the store to a round's data: consented conversations read once, in arrival order, through the offline
pipeline (normalization, length and language filters, dedup, the scrubber), with the poisoning guards and the
gate's held-out slice. Nothing leaves this module unscrubbed: the files a round writes hold scrubbed text only.

A conversation continued since it was last read carries `convlearn_first_new`: its earlier messages are context
for the new ones and are not trained on again (the renderer masks them, data/render.py).
"""
from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..data.hygiene import RecordFilter, scrub
from ..data.normalize import make_conversation
from ..data.records import Conversation, Skip
from ..data.splits import is_heldout
from ..errors import UserError

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
    """What one read of the store gave: training rows (LMSYS schema, scrubbed), the counts of every drop."""
    after: int
    upto: int
    rows: list[dict] = field(default_factory=list)
    read: int = 0
    heldout: int = 0
    drops: Counter = field(default_factory=Counter)
    scrubbed: Counter = field(default_factory=Counter)
    edits: Counter = field(default_factory=Counter)
    keys: Counter = field(default_factory=Counter)

    def record(self) -> dict:
        return {"after": self.after, "upto": self.upto, "read": self.read, "kept": len(self.rows),
                "heldout_for_gate": self.heldout, "dropped": dict(sorted(self.drops.items())),
                "scrubbed": dict(sorted(self.scrubbed.items())), "per_key": {str(k): v for k, v in self.keys.items()}}


def flood_key(text: str) -> str:
    """Text as a flood is recognised: case, punctuation, spacing and digits ignored (a spammer's variants)."""
    return re.sub(r"\d+", "0", " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split()))


def detect_language(text: str) -> str | None:
    """The language of a store conversation's user text (py3langid: a small offline classifier), so the
    `data.languages` filter applies to store conversations as it does to sources that label theirs."""
    import py3langid
    return py3langid.classify(text[:2000])[0] if text.strip() else None


class Pipeline:
    """Store rows -> scrubbed, filtered records, with the offline filters of `data`."""

    def __init__(self, cfg):
        self.cfg, self.learn = cfg, cfg.learn
        self.patterns = _blocklist(self.learn.blocklist)

    def record(self, conv: dict, edits: Counter, scrubbed: Counter, record_filter: RecordFilter | None,
               first_new: int = 0) -> Conversation:
        """One store conversation as a record (raises Skip with the reason it cannot be used)."""
        pairs = [(m["role"], m["content"]) for m in conv["messages"]]
        if max(len(c) for _, c in pairs) > self.cfg.data.max_message_chars:
            raise Skip("message_too_long")
        rec = make_conversation(conv["id"], "store", pairs, edits, None, "store")
        rec.language = detect_language(" ".join(m.content for m in rec.messages if m.role == "user"))
        if first_new:  # a message merged across the boundary by normalization is new (it holds new text)
            before = make_conversation(conv["id"], "store", pairs[:first_new], Counter())
            same = len(before.messages)
            if same and rec.messages[same - 1].content != before.messages[same - 1].content:
                same -= 1
            if same >= len(rec.messages):
                raise Skip("empty", "no new message")
            rec.meta["first_new"] = same
        if record_filter is not None:
            record_filter.check(rec)
        if self.cfg.data.scrub:
            scrub(rec, scrubbed)
        return rec


def read_round(store, cfg, after: int, upto: int, seed: int) -> Intake:
    """The round's training rows from the consented conversations with messages in (after, upto]."""
    learn = cfg.learn
    pipeline = Pipeline(cfg)
    intake = Intake(after, upto)
    record_filter = RecordFilter(cfg.data)
    per_key: Counter = Counter()
    flood: dict[str, set] = defaultdict(set)
    for conv in store.consented_messages(after, upto):
        intake.read += 1
        if is_heldout(conv["id"], learn.gate_fraction):
            intake.heldout += 1
            continue
        reason = _guard(conv, learn, pipeline.patterns, per_key, flood)
        if reason is not None:
            intake.drops[reason] += 1
            continue
        try:
            rec = pipeline.record(conv, intake.edits, intake.scrubbed, record_filter, conv["first_new"])
        except Skip as s:
            intake.drops[s.reason] += 1
            continue
        per_key[conv["key_id"]] += 1
        intake.keys[conv["key_id"]] += 1
        intake.rows.append(lmsys_row(rec))
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


def heldout_rows(store, cfg, upto: int) -> list[dict]:
    """The gate's slice: the most recent held-out consented conversations (whole, scrubbed, filtered)."""
    pipeline = Pipeline(cfg)
    convs = [c for c in store.consented_messages(0, upto) if is_heldout(c["id"], cfg.learn.gate_fraction)]
    rows = []
    for conv in reversed(convs):
        try:
            rows.append(lmsys_row(pipeline.record(conv, Counter(), Counter(), None)))
        except Skip:
            continue
        if len(rows) >= cfg.learn.gate_conversations:
            break
    return rows


def reservoir_rows(store, cfg, ranges: list[tuple[int, int]], n: int, seed: int) -> list[dict]:
    """`n` past conversations the current version's lineage learned from (whole; sampled with the round's
    seed), replayed against forgetting what earlier rounds taught. Deleted or withdrawn ones are gone."""
    if n <= 0 or not ranges:
        return []
    pipeline = Pipeline(cfg)
    seen, pool = set(), []
    for after, upto in ranges:
        for conv in store.consented_messages(after, upto):
            if conv["id"] not in seen and not is_heldout(conv["id"], cfg.learn.gate_fraction):
                seen.add(conv["id"])
                pool.append(conv)
    rng = random.Random(seed)
    rows = []
    for conv in rng.sample(pool, min(n, len(pool))):
        full = store.conversation(conv["id"])
        if full is None:
            continue
        conv = {**conv, "messages": [{"role": m["role"], "content": m["content"]} for m in full["messages"]]}
        try:
            rows.append({**lmsys_row(pipeline.record(conv, Counter(), Counter(), None)), "reservoir": True})
        except Skip:
            continue
    return rows


def lmsys_row(rec: Conversation) -> dict:
    row = {"conversation_id": rec.id, "model": "store", "language": rec.language, "turn":
           sum(m.role == "assistant" for m in rec.messages), "redacted": False, "openai_moderation": [],
           "conversation": [{"role": m.role, "content": m.content} for m in rec.messages]}
    if rec.meta.get("first_new"):
        row["convlearn_first_new"] = rec.meta["first_new"]
    return row


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
