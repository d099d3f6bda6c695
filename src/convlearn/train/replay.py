"""Replay against forgetting: a share of each batch's samples drawn from the original distribution (text such
as C4/RedPajama) and/or a reservoir of past conversations (uniform reservoir sampling over everything seen,
bounded size).

Every random choice is a function of (seed, batch counter) or (seed, items seen), so the mixer's state is a
few integers plus the reservoir's indices: it goes into the checkpoint and resume stays exact.
"""
from __future__ import annotations

import numpy as np


class ReplayMixer:
    def __init__(self, ratio: float, seed: int, *, original_size: int = 0, reservoir_size: int = 0,
                 source: str = "original", original_share: float = 0.5):
        self.ratio, self.seed, self.source, self.original_share = ratio, seed, source, original_share
        self.original_size = original_size if source in ("original", "both") else 0
        self.reservoir_size = reservoir_size if source in ("reservoir", "both") else 0
        self.reservoir: list[int] = []
        self.seen = 0
        self.batches = 0
        self.counts = {"new": 0, "original": 0, "reservoir": 0}

    def plan(self, k: int) -> list[tuple[str, int | None]]:
        """For the k slots of the next global micro-batch: ("new", None) or (source, index to replay)."""
        rng = np.random.default_rng([self.seed, 0x5EED, self.batches])
        self.batches += 1
        slots = []
        for u, v, w in rng.random((k, 3)):
            kind = "new"
            if u < self.ratio:
                use_original = self.original_size and (
                    not self.reservoir or self.source == "original" or v < self.original_share)
                if use_original:
                    kind, idx = "original", int(w * self.original_size)
                elif self.reservoir:
                    kind, idx = "reservoir", self.reservoir[int(w * len(self.reservoir))]
            slots.append((kind, idx if kind != "new" else None))
            self.counts[kind] += 1
        return slots

    def offer(self, index: int) -> None:
        """Algorithm R: after n offers every offered item is in the reservoir with probability size / n."""
        if not self.reservoir_size:
            return
        if len(self.reservoir) < self.reservoir_size:
            self.reservoir.append(index)
        else:
            j = int(np.random.default_rng([self.seed, 0xBEEF, self.seen]).integers(0, self.seen + 1))
            if j < self.reservoir_size:
                self.reservoir[j] = index
        self.seen += 1

    @property
    def realised_ratio(self) -> float:
        total = sum(self.counts.values())
        return (self.counts["original"] + self.counts["reservoir"]) / total if total else 0.0

    def state(self) -> dict:
        return {"reservoir": list(self.reservoir), "seen": self.seen, "batches": self.batches,
                "counts": dict(self.counts)}

    def load_state(self, state: dict) -> None:
        self.reservoir = [int(i) for i in state["reservoir"]]
        self.seen, self.batches = int(state["seen"]), int(state["batches"])
        self.counts = {k: int(v) for k, v in state["counts"].items()}
