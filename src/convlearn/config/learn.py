"""The `learn` section: the online learner beside `convlearn serve` (rounds, poisoning guards, the gate).

The rest of the run config says how a round trains and evaluates, exactly as offline: `model` is the base the
store's first version serves, `data` its filters and scrubber (its `sources` are the store's conversations and
are ignored), `render`, `method`, `train` (its `max_steps` is a per-round cap), `replay` (original-distribution
text), `eval` (the retention benchmark, original text and probes the gate scores).
"""
from __future__ import annotations

from typing import Optional

from .schema import opt, section


@section
class GateConfig:
    conversation_ppl_tolerance: float = opt(0.0, "Learning must not regress: the candidate's perplexity on the "
                                                 "held-out store conversations (assistant tokens) may exceed the "
                                                 "current version's by at most this relative share (0 = not at "
                                                 "all).", ge=0)
    retention_points: float = opt(3.0, "Forgetting: the retention benchmark (eval.criteria.retention_benchmark, "
                                       "e.g. MMLU) may drop by less than this many points from the base version v0 "
                                       "(the research plan's MMLU Δ < 3; against the base, so rounds cannot "
                                       "add up losses that each pass against their parent).", gt=0)
    original_ppl_increase: float = opt(0.05, "Forgetting: original-distribution perplexity (eval.original) may "
                                             "rise by at most this relative share over the base version v0's.", ge=0)
    probe_points: float = opt(5.0, "Learning must not regress on the knowledge probes (eval.probes, held-out "
                                   "phrasings' likelihood accuracy): a drop of at most this many points.", ge=0)
    require_heldout: bool = opt(True, "Reject a candidate when no held-out store conversation exists yet to "
                                      "measure learning on (false: judge it on forgetting and probes alone).")


@section
class LearnConfig:
    dir: str = opt("convlearn-live", "The serve directory: store.sqlite (unless `store`), versions/, rounds/.")
    store: Optional[str] = opt(None, "A SQLAlchemy URL of the store (e.g. postgresql://...); null = "
                                     "<dir>/store.sqlite.")
    round_conversations: int = opt(20, "A round starts once this many new consented conversations wait (K).",
                                   ge=1)
    round_minutes: float = opt(30.0, "... or once the oldest waiting one is this many minutes old (T), with at "
                                     "least min_round_conversations waiting.", gt=0)
    min_round_conversations: int = opt(1, "The fewest new conversations a timed round trains on.", ge=1)
    poll_seconds: float = opt(5.0, "How often the learner looks at the store.", gt=0)
    epochs: float = opt(1.0, "Passes over a round's new conversations (train.max_steps caps the steps).", gt=0)
    reservoir_ratio: float = opt(0.25, "Past conversations (from the current version's lineage) replayed in a "
                                       "round, as a share of its new ones.", ge=0)
    per_key_cap: int = opt(50, "Poisoning guard: at most this many conversations of one API key per round; the "
                               "rest are dropped (key_cap).", ge=1)
    flood_conversations: int = opt(3, "Poisoning guard: a user message whose normalized text appears in more "
                                      "than this many conversations of a round drops the later ones "
                                      "(near_duplicate_flood).", ge=1)
    flood_min_chars: int = opt(24, "Shorter user messages (greetings) never count as a flood.", ge=1)
    drop_downvoted: bool = opt(True, "Drop a conversation with a thumbs-down on any of its replies (downvoted).")
    blocklist: Optional[str] = opt(None, "A text file of regular expressions, one per line: a conversation "
                                         "matching any is dropped (moderation). Store conversations carry no "
                                         "moderation flags of their own.")
    gate_fraction: float = opt(0.1, "Share of consented conversations held out for the gate (by a hash of the "
                                    "conversation id); never trained on.", ge=0, lt=1)
    gate_conversations: int = opt(64, "The most recent held-out conversations the gate scores.", ge=1)
    gate: GateConfig = opt(GateConfig(), "When a candidate is promoted.")
    keep_rejected: int = opt(2, "Retention rule: the newest this many rejected candidates' folders are kept for "
                                "inspection; older ones, and any trained on a conversation deleted or withdrawn "
                                "since, are deleted (every round's data, cache and checkpoints go when it "
                                "commits).", ge=0)
    forget_retrains: int = opt(2, "A conversation of a round deleted or withdrawn before promotion: the round drops "
                                  "it and trains again, at most this many times; then it is rejected.", ge=0)
