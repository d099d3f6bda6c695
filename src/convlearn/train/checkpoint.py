"""Atomic checkpoints with everything exact resume needs, and the one place that knows their layout.

A checkpoint is `checkpoints/step-NNNNNNNN/` holding `model/` (what the method trains, a Hugging Face folder),
`trainer_state.pt` and a `COMPLETE` marker. It is written under a temporary name, completed with the marker,
then renamed into place; `latest` is replaced atomically afterwards. A crash mid-write leaves only a `.tmp-*`
folder, which is never taken for a checkpoint and is removed on the next save. `trainer_state.pt` holds tensors
and plain values only, so it loads with `torch.load(weights_only=True)`.

The marker records every file's size and SHA-256. Before a checkpoint is resumed from or evaluated it is
verified (files present, sizes, checksums, finite weights); a damaged one is skipped for the newest intact one,
with one line saying so.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from . import model_folder

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
    """Writes a run's checkpoints (keeping the last `keep_last`), each `model/` a self-contained model folder
    (train/model_folder.py: tokenizer, chat template, end-of-turn eos ids, an adapter's base)."""

    def __init__(self, out: Path, keep_last: int, tokenizer=None, spec=None, base: str | None = None):
        self.out, self.keep_last = Path(out), keep_last
        self.tokenizer, self.spec, self.base = tokenizer, spec, base

    def save(self, step: int, trainable, trainer_state: dict) -> Path:
        root = checkpoints_dir(self.out)
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        final = checkpoint_path(self.out, step)
        tmp = root / f".tmp-{final.name}-{os.getpid()}"
        try:
            trainable.method.save(trainable, tmp / MODEL_DIR)
        except OSError:
            raise
        except Exception as e:  # safetensors reports a failed write as its own error: give it its errno back
            found = re.search(r"os error (\d+)", str(e))
            if found is None:
                raise
            n = int(found.group(1))
            raise OSError(n, os.strerror(n), str(tmp / MODEL_DIR)) from None
        if self.tokenizer is not None:
            model_folder.complete(tmp / MODEL_DIR, self.tokenizer, self.spec, self.base)
        with open(tmp / STATE_FILE, "wb") as fh:  # through a Python file: a failed write raises with its errno
            torch.save({**trainer_state, "optimizer": trainable.optimizer.state_dict(), "rng": rng_state(),
                        "step": step}, fh)
        (tmp / MARKER).write_text(json.dumps({"step": step, "method": trainable.name, "files": manifest(tmp)}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / f".latest-{os.getpid()}"
        pointer.write_text(final.name)
        os.replace(pointer, root / "latest")
        for old in complete_checkpoints(self.out)[:-self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        return final


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def manifest(folder: Path) -> dict[str, list]:
    """relative path -> [size, sha256] of every file under `folder` (the marker excepted)."""
    folder = Path(folder)
    return {str(f.relative_to(folder)): [f.stat().st_size, _sha256(f)]
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name != MARKER}


def damage(checkpoint: Path) -> str | None:
    """Why a complete checkpoint cannot be used (a missing, cut or changed file; non-finite weights), or None."""
    checkpoint = Path(checkpoint)
    try:
        files = json.loads((checkpoint / MARKER).read_text()).get("files")
    except (OSError, ValueError):
        return "its COMPLETE marker is unreadable"
    if files is None:  # written before checksums were recorded: only what can still be checked
        files = {}
    for rel, (size, digest) in files.items():
        f = checkpoint / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != size:
            return f"{rel} holds {f.stat().st_size:,} of {size:,} bytes"
        if _sha256(f) != digest:
            return f"{rel} does not match its checksum"
    model = checkpoint / MODEL_DIR
    if not (model / "config.json").is_file() and not (model / "adapter_config.json").is_file():
        return f"{MODEL_DIR}/ has no config.json"
    for weights in sorted(model.glob("*.safetensors")):
        try:
            with safe_open(str(weights), "pt") as fh:
                for key in fh.keys():
                    if not torch.isfinite(fh.get_tensor(key)).all():
                        return f"{MODEL_DIR}/{weights.name} holds non-finite weights ({key})"
        except Exception as e:  # safetensors raises several types for a damaged header
            return f"{MODEL_DIR}/{weights.name} cannot be read ({e.__class__.__name__})"
    if not (checkpoint / STATE_FILE).is_file():
        return f"{STATE_FILE} is missing"
    return None


def usable_checkpoint(out: Path, say=None) -> Path | None:
    """The newest checkpoint that passes `damage`, saying in one line for each newer one why it was passed over
    (`say`: a function taking the line; default stderr)."""
    say = say or (lambda line: print(f"convlearn: {line}", file=sys.stderr))
    for ckpt in reversed(complete_checkpoints(out)):
        why = damage(ckpt)
        if why is None:
            return ckpt
        say(f"checkpoint {ckpt.name} is damaged ({why}); falling back to an older one")
    return None


def link_final(out: Path) -> Path | None:
    """`final` -> the newest checkpoint's model folder (a relative link: the run directory can move)."""
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return None
    link = Path(out) / "final"
    tmp = Path(out) / f".final-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(Path("checkpoints") / ckpt.name / MODEL_DIR, target_is_directory=True)
    if link.is_dir() and not link.is_symlink():
        # A run folder copied with the link followed (shutil.copytree, `cp -rL`, some sync tools) holds
        # `final` as a real copy of an older checkpoint's model: rename() cannot replace a directory.
        shutil.rmtree(link)
    os.replace(tmp, link)
    return link


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
