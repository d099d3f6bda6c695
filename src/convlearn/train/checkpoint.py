"""Atomic checkpoints with everything exact resume needs, and the one place that knows their layout.

A checkpoint is `checkpoints/step-NNNNNNNN/` holding `model/` (what the method trains, a Hugging Face folder),
`trainer_state.pt` and a `COMPLETE` marker. It is written under a temporary name, completed with the marker,
then renamed into place; `latest` is replaced atomically afterwards. A crash mid-write leaves only a `.tmp-*`
folder, which is never taken for a checkpoint and is removed on the next save. `trainer_state.pt` holds tensors
and plain values only, so it loads with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

STATE_FILE = "trainer_state.pt"
MODEL_DIR = "model"
MARKER = "COMPLETE"


def checkpoints_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def checkpoint_path(out: Path, step: int) -> Path:
    return checkpoints_dir(out) / f"step-{step:08d}"


def step_of(checkpoint: Path) -> int:
    return int(Path(checkpoint).name.split("-")[1])


def is_complete(checkpoint: Path) -> bool:
    return (Path(checkpoint) / MARKER).is_file()


def complete_checkpoints(out: Path) -> list[Path]:
    """Every complete checkpoint of a run, oldest first."""
    return sorted(p for p in checkpoints_dir(out).glob("step-*") if is_complete(p))


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


class Checkpointer:
    """Writes a run's checkpoints (keeping the last `keep_last`) and finds the one to resume from."""

    def __init__(self, out: Path, keep_last: int):
        self.out, self.keep_last = Path(out), keep_last

    def save(self, step: int, trainable, trainer_state: dict) -> Path:
        root = checkpoints_dir(self.out)
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        final = checkpoint_path(self.out, step)
        tmp = root / f".tmp-{final.name}-{os.getpid()}"
        trainable.method.save(trainable, tmp / MODEL_DIR)
        torch.save({**trainer_state, "optimizer": trainable.optimizer.state_dict(), "rng": rng_state(),
                    "step": step}, tmp / STATE_FILE)
        (tmp / MARKER).write_text(json.dumps({"step": step, "method": trainable.name}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / f".latest-{os.getpid()}"
        pointer.write_text(final.name)
        os.replace(pointer, root / "latest")
        for old in complete_checkpoints(self.out)[:-self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        return final


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint `latest` names if it is complete, else the newest complete one, else None."""
    root = checkpoints_dir(out)
    pointer = root / "latest"
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if is_complete(named):
            return named
    complete = complete_checkpoints(out)
    return complete[-1] if complete else None


def load_trainer_state(checkpoint: Path) -> dict:
    return torch.load(Path(checkpoint) / STATE_FILE, weights_only=True, map_location="cpu")
