"""The demo's retention benchmark: docstring continuations in HellaSwag's schema, run by lm-eval's own
`hellaswag` task (context, four endings scored by likelihood, acc_norm), re-pointed at local files.

Why not MMLU's schema: MMLU is scored by the likelihood of the answer *letter* after the lettered choices, which a
1.5 M-parameter model pretrained for minutes cannot map to choices (it sat at chance, 28.75%, before and after
training, so its "retention" verdict could pass with no evidence). A cloze question asks which continuation a
docstring has; the tiny base learns the docstrings in pretraining (the original distribution), so it answers well
above chance, and forgetting that text shows as a drop. Questions come from the documents pretraining trains on
(not the 10% it holds out); distractors are the continuations of other docstrings. HellaSwag's prompt is the
context itself with the ending right after it, so the model scores the text as it learned it (ARC's
"Question: ... Answer:" frame put a template between the two that a model this small cannot see across).
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

from .builtin import stdlib_docstrings
from .splits import is_heldout

CHOICES = 4
BENCHMARK = "hellaswag"  # the lm-eval task these files feed


def _windows(text: str, context: int = 10, ending: int = 6, limit: int = 80):
    """(context, ending) word windows through the start of a docstring: the words a model that learned the text
    should continue with, after the words before them."""
    words = " ".join(text.split()).split(" ")[:limit]
    for start in range(0, len(words) - context - ending + 1, context + ending):
        ctx, end = words[start:start + context], words[start + context:start + context + ending]
        if re.match(r"[A-Za-z(]", end[0]) and re.search(r"[A-Za-z]", " ".join(ctx)):
            yield " ".join(ctx), " ".join(end)


def write_docstring_cloze(out: str | Path, questions: int = 600, train: int = 25, seed: int = 0,
                          heldout_fraction: float = 0.1, documents: int | None = None) -> Path:
    """validation.jsonl (up to `questions`) and train.jsonl (`train`, lm-eval's few-shot pool) in
    Rowan/hellaswag's schema, from the first `documents` docstrings (what pretraining read)."""
    rng = random.Random(seed)
    items = []
    for i, d in enumerate(stdlib_docstrings()):
        if documents is not None and i >= documents:
            break
        if is_heldout(d["id"], heldout_fraction):  # what the demo's pretraining (heldout 0.1) never trained on
            continue
        if "[" in d["text"]:  # HellaSwag's preprocessing drops [...]
            continue
        items.extend((d["id"], ctx, end) for ctx, end in _windows(d["text"]))
    rng.shuffle(items)
    endings = [e for _, _, e in items]
    rows = []
    for n, (doc_id, prefix, ending) in enumerate(items[:questions + train]):
        wrong: list[str] = []
        while len(wrong) < CHOICES - 1:
            e = rng.choice(endings)
            if e != ending and e not in wrong:
                wrong.append(e)
        answer = rng.randrange(CHOICES)
        rows.append({"ind": n, "activity_label": "Python documentation", "ctx_a": prefix, "ctx_b": "",
                     "ctx": prefix, "endings": wrong[:answer] + [ending] + wrong[answer:], "source_id": doc_id,
                     "split": "val", "split_type": "indomain", "label": str(answer)})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_rows, test_rows = rows[:train], rows[train:]  # the few-shot pool first; every other item is a question
    if not test_rows:
        raise ValueError(f"{len(rows)} usable docstrings: too few for a benchmark")
    (out / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    if train_rows:
        (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    return out
