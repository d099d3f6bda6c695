"""The demos' base models, built once in the demo's folder: the tiny Qwen2 twin, the twin pretrained on Python's
docstrings (the "original distribution", so there is something to forget), and for the live demo that base
taught to chat. Each is an ordinary `convlearn train` run whose last checkpoint becomes a model folder.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..config import load_config
from ..experiments.run import run_training
from ..tiny import build_tiny_model
from ..train.checkpoint import MODEL_DIR, checkpoint_path

# The documents the base model learns (the first ones of the standard library's docstrings, 90% trained on): few
# enough that a 1.5 M-parameter model learns them in a few minutes, so the retention benchmark built from them
# is well above chance (tiny/base.yaml's replay and original-text evaluation read the same documents).
PRETRAIN_DOCUMENTS = 600
DOCSTRINGS = f"{{path: python-docstrings, format: text, limit: {PRETRAIN_DOCUMENTS}}}"


def tiny_twin(out: Path) -> Path:
    """The demos' tiny Qwen2 twin, `out`/tiny-qwen2 (built once)."""
    tiny = out / "tiny-qwen2"
    if not (tiny / "config.json").is_file():
        build_tiny_model("qwen2", tiny, seed=0)
    return tiny


def _trained_folder(out: Path, folder: str, run: str, model: Path, steps: int, overrides: list[str]) -> Path:
    """`out`/`folder`: `model` trained `steps` AdamW steps (batch 16, sequences of 128, lr 0.003) with
    `overrides`, as a model folder with its tokenizer. Built once: an existing folder is returned as it is."""
    target = out / folder
    if (target / "config.json").is_file():
        return target
    cfg = load_config(None, [
        f"model.name={model}", f"data.cache_dir={out / 'cache'}", "render.max_seq_len=128", "method.name=adamw",
        f"train.max_steps={steps}", "train.batch_size=16", "train.lr=0.003", "train.save_every=0",
        "eval.schedule=[]", "eval.final_suite=null", "logging.progress=false", "logging.tensorboard=false",
        *overrides])
    run_dir = out / run
    shutil.rmtree(run_dir, ignore_errors=True)
    run_training(cfg, run_dir)
    shutil.copytree(checkpoint_path(run_dir, steps) / MODEL_DIR, target)
    for f in model.iterdir():  # the tokenizer travels with the weights
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, target / f.name)
    return target


def pretrain_base(out: Path, tiny: Path, steps: int, documents: int = PRETRAIN_DOCUMENTS) -> Path:
    """The base model: the twin trained on docstrings with our own loop."""
    return _trained_folder(out, "base", "pretrain", tiny, steps, [
        f"data.sources=[{{path: python-docstrings, format: text, limit: {documents}}}]",
        "data.heldout_fraction=0.1", "train.warmup_steps=20"])


def chat_base(out: Path, docstring_base: Path, steps: int) -> Path:
    """The live demo's served model: the docstring base taught to chat (chatterbot conversations, with a third
    of each batch docstrings so it keeps them), so the replies it serves are sentences, not token soup; what
    users teach it later is then learned beside fluent text, as with a real instruction model."""
    return _trained_folder(out, "chat-base", "chat-tune", docstring_base, steps, [
        "data.sources=[{path: chatterbot}]", "data.heldout_fraction=0.05", "train.warmup_steps=10",
        "replay.ratio=0.33", f"replay.original={DOCSTRINGS}"])
