"""An MMLU-schema benchmark made from Python's own docstrings (which object does this text describe?), so the
offline demo can measure retention of what its base model learned in pretraining through the real lm-eval
MMLU task (same prompt and metric), with real MMLU subject names."""
from __future__ import annotations

import json
import random
from pathlib import Path

from .builtin import stdlib_docstrings

SUBJECTS = ("high_school_computer_science", "college_computer_science")


def write_docstring_mmlu(out: str | Path, per_subject: int = 80, seed: int = 0) -> Path:
    rng = random.Random(seed)
    docs = [d for d in stdlib_docstrings() if "." in d["id"]]
    firsts = []
    for d in docs:
        sentence = d["text"].split("\n\n")[0].replace("\n", " ").strip()
        name = d["id"].rsplit(".", 1)[-1]
        if 20 <= len(sentence) <= 200 and name not in sentence:
            firsts.append((sentence, name))
    rng.shuffle(firsts)
    names = sorted({n for _, n in firsts})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {"test": [], "dev": []}
    it = iter(firsts)
    for subject in SUBJECTS:
        for split, n in (("dev", 5), ("test", per_subject)):
            for _ in range(n):
                sentence, name = next(it)
                wrong = rng.sample([x for x in names if x != name], 3)
                answer = rng.randrange(4)
                choices = wrong[:answer] + [name] + wrong[answer:]
                rows[split].append({"question": f"Which Python object is documented as: \"{sentence}\"",
                                    "subject": subject, "choices": choices, "answer": answer})
    for split, split_rows in rows.items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split_rows))
    return out
