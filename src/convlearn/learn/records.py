"""The typed records of a learning round, and the only code that knows what plan.json, training.json, gate.json
and round.json hold (their paths: store/layout.py).

A round writes them in this order: `RoundPlan` (what it reads and trains on), `TrainingOutcome` (what training
did), `GateDecision` (each `Check` with its figure, interval and bound), `RoundRecord` (all of it, and how long it
took). Each is written atomically, so a restart finds either the whole file or none.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def _known(cls, d: dict) -> dict:
    """The keys of `d` that are fields of `cls` (files written by an older convlearn may hold others)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass
class IntakeCounts:
    """What one read of the store gave: how many conversations were read, kept, held out, dropped (by reason)."""
    after: int
    upto: int
    read: int = 0
    kept: int = 0
    heldout_for_gate: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    scrubbed: dict[str, int] = field(default_factory=dict)
    per_key: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "IntakeCounts":
        return cls(**_known(cls, d))


@dataclass
class RoundPlan:
    """What round `round` reads, from which version it trains, and its data files' sizes; written before training,
    so a restart of the same cursor trains on exactly the same conversations."""
    round: int
    after: int                 # the cursor: messages in (after, upto] are this round's
    upto: int
    parent: str                # the version it trains from
    parent_path: str
    seed: int
    intake: IntakeCounts
    train_rows: int            # new conversations trained on
    reservoir: int             # past conversations replayed
    heldout: int               # the gate's held-out conversations
    oldest: float | None       # arrival time of the oldest new message
    # The ids of every conversation this round trains on (new and replayed): a later round's reservoir samples
    # only from these, so a conversation the guards dropped never comes back through it.
    trained: list[str] = field(default_factory=list)
    heldout_ids: list[str] = field(default_factory=list)  # the gate's slice, re-checked like `trained`
    # conversations deleted or withdrawn after the plan was written, dropped from it (ids only, never text)
    forgotten: list[str] = field(default_factory=list)
    retrains: int = 0          # trainings started again because a conversation they read was deleted/withdrawn

    @property
    def version(self) -> str:
        return f"v{self.round}"

    def to_json(self) -> dict:
        return {**asdict(self), "intake": self.intake.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> "RoundPlan":
        return cls(**{**_known(cls, d), "intake": IntakeCounts.from_json(d["intake"])})

    def save(self, path: Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> "RoundPlan":
        return cls.from_json(json.loads(path.read_text()))


@dataclass
class TrainingOutcome:
    """What a round's training did: its steps and loss, or why it stopped (`non_finite`), and its candidate."""
    steps_planned: int
    resumed: bool
    steps: int = 0
    final_loss: float | None = None
    tokens: int = 0
    skipped_steps: int = 0
    tokens_per_s: float | None = None
    precision: str | None = None
    method: str | None = None
    non_finite: str | None = None   # set when training stopped or skipped non-finite steps: the round is rejected
    candidate: str | None = None    # the exported model folder (absent when training failed)
    seconds: float | None = None

    @property
    def failed(self) -> bool:
        return self.non_finite is not None

    def check(self) -> "Check":
        """The gate's first check: a round whose training failed is rejected for it, whatever else it measures."""
        if self.failed:
            return Check(Status.FAIL, detail=self.non_finite, blocking=True)
        return Check(Status.PASS, detail=f"{self.steps} steps, final loss {self.final_loss}")

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, d: dict) -> "TrainingOutcome":
        return cls(**_known(cls, d))

    def save(self, path: Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> "TrainingOutcome":
        return cls.from_json(json.loads(path.read_text()))


class Status(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    NOT_MEASURED = "not measured"


class Unit(str, Enum):
    RELATIVE = "relative"   # a relative change (0.05 = +5%)
    POINTS = "points"       # accuracy points


@dataclass
class Check:
    """One gate check: its status, and for a measured one its figure, interval and bound."""
    status: Status
    what: str = ""
    value: float | None = None
    low: float | None = None
    high: float | None = None
    bound: float | None = None
    unit: Unit | None = None
    detail: str = ""
    samples: int | None = None      # what the figure was computed on (per-sample pairs, questions)
    questions: int | None = None
    p_value: float | None = None
    # The figure held against the bound: the interval's pessimistic end (forgetting, probes) or the point
    # estimate (learning's non-regression); None where nothing was measured.
    judged: float | None = None
    # A check whose inputs are configured must be measured: not measured, it blocks promotion.
    blocking: bool = False

    @property
    def measured(self) -> bool:
        return self.value is not None

    @property
    def blocks(self) -> bool:
        return self.status == Status.FAIL or (self.status == Status.NOT_MEASURED and self.blocking)

    def reason(self) -> str:
        """The one line a rejection gives for this check."""
        if not self.measured:  # a failure with no figure (training, forgotten conversations) says why itself
            return f"not measured: {self.detail}" if self.blocking and self.status != Status.FAIL else self.detail
        fmt = (lambda x: f"{100 * x:+.1f}%") if self.unit == Unit.RELATIVE else (lambda x: f"{x:+.1f}")
        judged = "" if self.judged is None or self.judged == self.value else \
            f", its pessimistic end {fmt(self.judged)}"
        if self.low is not None:
            return (f"{self.what} {fmt(self.value)} [{fmt(self.low)}, {fmt(self.high)}]{judged} over the bound "
                    f"{fmt(self.bound)}")
        return f"{self.what} {fmt(self.value)}{judged} over the bound {fmt(self.bound)}"

    def to_json(self) -> dict:
        out = {"status": self.status.value}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name != "status" and v is not None and v != "" and v is not False:
                out[f.name] = v.value if isinstance(v, Enum) else v
        return out

    @classmethod
    def from_json(cls, d: dict) -> "Check":
        d = _known(cls, d)
        return cls(**{**d, "status": Status(d["status"]),
                      "unit": Unit(d["unit"]) if d.get("unit") else None})


@dataclass
class GateDecision:
    promote: bool
    checks: dict[str, Check]
    reasons: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)    # per model (current, candidate, base): its headline figures
    unmeasured: list[str] = field(default_factory=list)  # the checks this learner's config leaves off

    @classmethod
    def of(cls, checks: dict[str, Check], figures: dict | None = None) -> "GateDecision":
        """Promote only if no check failed and every configured check was measured; a rejection names each
        check that blocks it."""
        failed = {k: c for k, c in checks.items() if c.blocks}
        return cls(not failed, checks, [f"{k}: {c.reason()}" for k, c in failed.items()], figures or {})

    def to_json(self) -> dict:
        return {"promote": self.promote, "reasons": self.reasons,
                "checks": {k: c.to_json() for k, c in self.checks.items()}, "figures": self.figures,
                "unmeasured": self.unmeasured}

    @classmethod
    def from_json(cls, d: dict) -> "GateDecision":
        return cls(d.get("promote", False), {k: Check.from_json(c) for k, c in d.get("checks", {}).items()},
                   d.get("reasons", []), d.get("figures", {}), d.get("unmeasured", []))

    def save(self, path: Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> "GateDecision":
        return cls.from_json(json.loads(path.read_text()))


@dataclass
class RoundRecord:
    """A finished round: `status` empty (nothing to train on), promoted or rejected."""
    round: int
    version: str
    parent: str
    intake: IntakeCounts
    reservoir: int
    heldout_for_gate: int
    status: str = "empty"
    training: TrainingOutcome | None = None
    gate: GateDecision | None = None
    seconds: dict = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"

    def to_json(self) -> dict:
        out = {"round": self.round, "version": self.version, "parent": self.parent, "intake": self.intake.to_json(),
               "reservoir": self.reservoir, "heldout_for_gate": self.heldout_for_gate, "status": self.status,
               "seconds": self.seconds}
        if self.training is not None:
            out["training"] = self.training.to_json()
        if self.gate is not None:
            out["gate"] = self.gate.to_json()
        return out

    @classmethod
    def from_json(cls, d: dict) -> "RoundRecord":
        return cls(**{**_known(cls, d), "intake": IntakeCounts.from_json(d["intake"]),
                      "training": TrainingOutcome.from_json(d["training"]) if d.get("training") else None,
                      "gate": GateDecision.from_json(d["gate"]) if d.get("gate") else None})

    def save(self, path: Path) -> None:
        write_json(path, self.to_json())
