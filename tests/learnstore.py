"""What the learner's tests share: a store filled exchange by exchange as the server fills it, and the
run config of a round on a tiny twin."""
from __future__ import annotations

from pathlib import Path

from convlearn.config import SourceConfig
from convlearn.data.records import DataStats
from convlearn.data.stream import read_source
from convlearn.store import Store
from helpers import run_config

ROUND_SETTINGS = {
    "method": {"name": "galore", "rank": 8, "layerwise": True, "update_proj_gap": 50},
    "train": {"max_steps": 40, "batch_size": 4, "lr": 0.003, "save_every": 0, "warmup_steps": 0},
    "render": {"max_seq_len": 96},
    "eval": {"schedule": [], "final_suite": None, "benchmarks": [], "batch_size": 8,
             "original": {"path": "python-docstrings", "format": "text", "limit": 40}},
}


def chats(n: int, skip: int = 0) -> list[list[tuple[str, str]]]:
    """`n` chatterbot conversations as (user, assistant) exchanges."""
    out = []
    for c in read_source(SourceConfig(path="chatterbot"), DataStats()):
        pairs = [(c.messages[i].content, c.messages[i + 1].content) for i in range(0, len(c.messages) - 1, 2)
                 if c.messages[i].role == "user" and c.messages[i + 1].role == "assistant"]
        if pairs:
            out.append(pairs)
    return out[skip:skip + n]


def talk(store: Store, secret: str, exchanges: list[tuple[str, str]], tag: str) -> str:
    """One conversation, exchange by exchange, as the server stores it."""
    key = store.key_for(secret)
    history: list[dict] = []
    cid = None
    for i, (user, reply) in enumerate(exchanges):
        history.append({"role": "user", "content": user})
        cid = store.record_exchange(key, history, reply, f"{tag}-{i}", "v0")
        history.append({"role": "assistant", "content": reply})
    return cid


def learn_config(tmp_path: Path, model, learn_dir: Path, **over):
    sections = {k: dict(v) for k, v in ROUND_SETTINGS.items()}
    sections["learn"] = {"dir": str(learn_dir), "gate_fraction": 0.2, "epochs": 1.0, "poll_seconds": 0.1}
    for name, values in over.items():
        sections[name] = {**sections.get(name, {}), **values}
    return run_config(tmp_path / f"learn-{learn_dir.name}.yaml", model, tmp_path / "cache", **sections)
