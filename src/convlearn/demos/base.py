"""The demos' base models, built once in the demo's folder: the tiny Qwen2 twin, the twin pretrained on Python's
docstrings (the "original distribution", so there is something to forget) and on chats (the format and the
register of conversation, from conversations the experiments never use), and for the live demo that base taught
to chat more. Each is an ordinary `convlearn train` run whose last checkpoint becomes a model folder.
"""
from __future__ import annotations

import json
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
# The demos continue training at rates below this one (tiny/*.yaml): a base continued above its own pretraining
# rate forgets by construction, and that would be the finding.
PRETRAIN_LR = 0.003
DOCSTRINGS = f"{{path: python-docstrings, format: text, limit: {PRETRAIN_DOCUMENTS}}}"


def tiny_twin(out: Path) -> Path:
    """The demos' tiny Qwen2 twin, `out`/tiny-qwen2 (built once)."""
    tiny = out / "tiny-qwen2"
    if not (tiny / "config.json").is_file():
        build_tiny_model("qwen2", tiny, seed=0)
    return tiny


def _trained_folder(out: Path, folder: str, run: str, model: Path, steps: int, overrides: list[str]) -> Path:
    """`out`/`folder`: `model` trained `steps` AdamW steps (batch 16, sequences of 128, lr PRETRAIN_LR) with
    `overrides`, as a model folder with its tokenizer. Built once: an existing folder is returned as it is."""
    target = out / folder
    if (target / "config.json").is_file():
        return target
    cfg = load_config(None, [
        f"model.name={model}", f"data.cache_dir={out / 'cache'}", "render.max_seq_len=128", "method.name=adamw",
        f"train.max_steps={steps}", "train.batch_size=16", f"train.lr={PRETRAIN_LR}", "train.save_every=0",
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


_ASK = ["What does {name} do?", "Can you explain {name} in Python?", "Tell me about {name}.",
        "What is {name} for?"]


def docstring_chats(out: Path, documents: int = PRETRAIN_DOCUMENTS) -> Path:
    """`out`/docstring_chats.jsonl: one conversation per pretraining docstring (a user asks what the object does,
    the assistant answers with the docstring's first paragraph), in convlearn's own format. Pretraining on them
    teaches the base the chat format on its own text, so the later experiments measure learning the
    conversations' content, not learning that turns exist (a base that never saw the template starts at
    perplexity in the thousands, and most of its "learning" is the template)."""
    from ..data.builtin import stdlib_docstrings
    from ..data.records import Conversation, Message
    path = out / "docstring_chats.jsonl"
    rows = []
    for i, d in enumerate(stdlib_docstrings()):
        if i >= documents:
            break
        ask = _ASK[i % len(_ASK)].format(name=d["id"].rsplit(".", 1)[-1])
        rows.append(Conversation(id=f"doc-chat-{i}", source="docstring-chats", language="en", meta={}, messages=[
            Message("user", ask), Message("assistant", d["text"].split("\n\n")[0].strip())]).to_dict())
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# The chatterbot topic the base learns to chat on; the experiments read every other topic (`split_chatterbot`).
PRETRAIN_TOPIC = "tech_support.yml"


def split_chatterbot(out: Path) -> tuple[Path, Path]:
    """(`out`/chat-pretrain, `out`/chat): the chatterbot corpus split by topic file, the pretraining topic apart
    from the topics the experiments learn, so what the base has seen is never what it is judged learning."""
    from ..data.builtin import chatterbot_dir
    seen, new = out / "chat-pretrain", out / "chat"
    for folder in (seen, new):
        folder.mkdir(parents=True, exist_ok=True)
    for f in sorted(chatterbot_dir().glob("*.yml")):
        shutil.copy(f, (seen if f.name == PRETRAIN_TOPIC else new) / f.name)
    return seen, new


def pretrain_base(out: Path, tiny: Path, steps: int, documents: int = PRETRAIN_DOCUMENTS) -> Path:
    """The base model: the twin trained with our own loop, at PRETRAIN_LR, on docstrings (the original
    distribution), the same docstrings as chats and chatterbot's tech-support topic (the chat format and a
    conversational register, so the experiments measure learning new conversations, not learning to chat)."""
    chats = docstring_chats(out, documents)
    seen, _ = split_chatterbot(out)
    return _trained_folder(out, "base", "pretrain", tiny, steps, [
        f"data.sources=[{{path: python-docstrings, format: text, limit: {documents}}}, {{path: {chats}}}, "
        f"{{path: {seen}}}]", "data.heldout_fraction=0.1", "train.warmup_steps=20", f"train.lr={PRETRAIN_LR}"])


def chat_base(out: Path, docstring_base: Path, steps: int) -> Path:
    """The live demo's served model: the docstring base taught to chat (chatterbot conversations, with a third
    of each batch docstrings so it keeps them), so the replies it serves are sentences, not token soup; what
    users teach it later is then learned beside fluent text, as with a real instruction model."""
    return _trained_folder(out, "chat-base", "chat-tune", docstring_base, steps, [
        "data.sources=[{path: chatterbot}]", "data.heldout_fraction=0.05", "train.warmup_steps=10",
        "replay.ratio=0.33", f"replay.original={DOCSTRINGS}"])
