"""Tiny local copies of the five benchmarks, in the hub datasets' schemas (one file per split)."""
import json
from pathlib import Path


def _write(folder: Path, split: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_benchmarks(root: Path) -> dict[str, Path]:
    mmlu = root / "mmlu"
    subjects = {"astronomy": ("Which planet is largest?", ["Mars", "Jupiter", "Venus", "Earth"], 1),
                "high_school_computer_science": ("What does CPU stand for?",
                                                 ["Central processing unit", "Core power unit",
                                                  "Computer peripheral unit", "Cache process unit"], 0)}
    test, dev = [], []
    for subject, (q, choices, answer) in subjects.items():
        for i in range(3):
            test.append({"question": f"{q} ({i})", "subject": subject, "choices": choices, "answer": answer})
        for i in range(5):  # MMLU's dev split: 5 per subject, the 5-shot pool
            dev.append({"question": f"Example {i} about {subject}?", "subject": subject,
                        "choices": ["w", "x", "y", "z"], "answer": i % 4})
    _write(mmlu, "test", test)
    _write(mmlu, "dev", dev)
    hs = root / "hellaswag"
    _write(hs, "validation", [{"ind": i, "activity_label": "Making tea", "ctx_a": "A man boils water.",
                               "ctx_b": "then he", "ctx": "A man boils water. then he",
                               "endings": ["pours it over tea.", "eats the kettle.", "runs away [title] fast.",
                                           "sings."], "source_id": f"s{i}", "split": "val",
                               "split_type": "indomain", "label": str(i % 4)} for i in range(4)])
    arc = root / "arc_challenge"
    arc_rows = [{"id": f"a{i}", "question": f"What do plants need for photosynthesis? ({i})",
                 "choices": {"text": ["sunlight", "salt", "sand", "noise"], "label": ["A", "B", "C", "D"]},
                 "answerKey": "A"} for i in range(3)]
    _write(arc, "test", arc_rows)
    _write(arc, "train", arc_rows[:2])
    tqa = root / "truthfulqa_mc2"
    _write(tqa, "validation", [{"question": f"What happens if you crack your knuckles? ({i})",
                                "mc1_targets": {"choices": ["Nothing harmful", "Arthritis"], "labels": [1, 0]},
                                "mc2_targets": {"choices": ["Nothing harmful", "Nothing much", "Arthritis"],
                                                "labels": [1, 1, 0]}} for i in range(3)])
    gsm = root / "gsm8k"
    gsm_rows = [{"question": f"Tom has {i} apples and buys 2 more. How many now?",
                 "answer": f"He has {i} + 2 = {i + 2} apples.\n#### {i + 2}"} for i in range(3)]
    _write(gsm, "test", gsm_rows)
    _write(gsm, "train", [{"question": f"Ann has {i} pens and loses 1. How many left?",
                           "answer": f"She has {i} - 1 = {i - 1} pens.\n#### {i - 1}"} for i in range(2, 8)])
    return {"mmlu": mmlu, "hellaswag": hs, "arc_challenge": arc, "truthfulqa_mc2": tqa, "gsm8k": gsm}
