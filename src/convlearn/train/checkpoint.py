"""Atomic checkpoints with everything exact resume needs.

A checkpoint is written under a temporary name, completed with a `COMPLETE` marker, then renamed into place;
`latest` is replaced atomically afterwards. A crash mid-write leaves only a `.tmp-*` folder, which is never
taken for a checkpoint and is removed on the next save. `trainer_state.pt` holds tensors and plain values
only, so it loads with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

STATE_FILE = "trainer_state.pt"


def checkpoints_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(out: Path, step: int, method, trainer_state: dict, keep_last: int) -> Path:
    root = checkpoints_dir(out)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step-{step:08d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    method.save_model(tmp / "model")
    torch.save({**trainer_state, "optimizer": method.optimizer.state_dict(), "rng": rng_state(), "step": step},
               tmp / STATE_FILE)
    (tmp / "COMPLETE").write_text(json.dumps({"step": step, "method": method.name}))
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = root / f".latest-{os.getpid()}"
    pointer.write_text(name)
    os.replace(pointer, root / "latest")
    complete = sorted(p for p in root.glob("step-*") if (p / "COMPLETE").is_file())
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint `latest` names if it is complete, else the newest complete one, else None."""
    root = checkpoints_dir(out)
    pointer = root / "latest"
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if (named / "COMPLETE").is_file():
            return named
    complete = sorted(p for p in root.glob("step-*") if (p / "COMPLETE").is_file())
    return complete[-1] if complete else None


def load_trainer_state(path: Path) -> dict:
    return torch.load(Path(path) / STATE_FILE, weights_only=True, map_location="cpu")
