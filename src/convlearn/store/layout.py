"""What a serve directory holds, in one place: the server, the learner, the CLI and the demos ask this module for
every path, so none of them spells a file name of another.

```
<serve dir>/
  store.sqlite            the conversation store (unless --store names another database)
  learn-config.yaml       the resolved config `convlearn learn` runs with
  versions/vN/            promoted model folders (the store's version rows point here)
  rounds/rNNNN/           one learning round: plan.json, data/, cache/, run/, training.json, candidate/, gate/,
                          gate.json, round.json (learn/records.py knows what each JSON holds). Once the
                          round commits, data/, cache/, gate/ and run/checkpoints/ are deleted (only ids and
                          figures stay), and a rejected candidate/ by learn.keep_rejected
  gate-cache/             the gate's figures of a version on the fixed evaluations, per version
```
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STORE_FILE = "store.sqlite"


@dataclass(frozen=True)
class RoundDir:
    """One round's folder: everything it writes, in the order it writes it."""
    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def train_records(self) -> Path:
        return self.data / "train.jsonl"

    @property
    def heldout_records(self) -> Path:
        return self.data / "heldout.jsonl"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def training(self) -> Path:
        return self.root / "training.json"

    @property
    def candidate(self) -> Path:
        return self.root / "candidate"

    @property
    def cache(self) -> Path:
        """The round's prepared data (token ids of its conversations): deleted when the round commits."""
        return self.root / "cache"

    @property
    def gate_work(self) -> Path:
        return self.root / "gate"

    @property
    def gate(self) -> Path:
        return self.root / "gate.json"

    @property
    def record(self) -> Path:
        return self.root / "round.json"


@dataclass(frozen=True)
class ServeDir:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def store_file(self) -> Path:
        return self.root / STORE_FILE

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.store_file}"

    @property
    def learn_config(self) -> Path:
        return self.root / "learn-config.yaml"

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    def version(self, version_id: str) -> Path:
        return self.versions / version_id

    def round(self, n: int) -> RoundDir:
        return RoundDir(self.root / "rounds" / f"r{n:04d}")

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def gate_cache(self) -> Path:
        return self.root / "gate-cache"

    @staticmethod
    def holds_store(path: Path) -> bool:
        return (Path(path) / STORE_FILE).exists()
