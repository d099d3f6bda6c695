"""A hostile-file corpus, generated (no checked-in blobs): data files as they arrive from the internet.

Each writer returns the path and what a correct reader keeps and skips. `python tests/hostile.py OUT` writes
them all to a folder, to try `convlearn data inspect` on by hand.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from pathlib import Path


def sharegpt(i: int) -> dict:
    return {"id": f"sg{i}", "conversations": [{"from": "human", "value": f"Question number {i}?"},
                                              {"from": "gpt", "value": f"Answer number {i}."}]}


def lmsys(i: int, **over) -> dict:
    row = {"conversation_id": f"lm{i}", "model": "m", "language": "English", "turn": 1, "redacted": False,
           "openai_moderation": [], "conversation": [{"role": "user", "content": f"Hello {i}?"},
                                                     {"role": "assistant", "content": f"Hi, this is reply {i}."}]}
    row.update(over)
    return row


def truncated_array(path: Path, n: int = 100, pretty: bool = False) -> tuple[Path, int]:
    """A JSON array of n records cut inside the last one (a download stopped early): n - 1 complete."""
    text = json.dumps([sharegpt(i) for i in range(n)], indent=2 if pretty else None)
    cut = text.rindex('"Answer number')  # inside the last record
    path.write_text(text[:cut])
    return path, n - 1


def big_array(path: Path, n: int) -> Path:
    """A single JSON array of n records, written without holding them all."""
    with open(path, "w") as fh:
        fh.write("[")
        for i in range(n):
            fh.write(("," if i else "") + json.dumps(sharegpt(i)))
        fh.write("]")
    return path


def with_bom(path: Path, n: int = 5) -> Path:
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(lmsys(i)) + "\n" for i in range(n)).encode())
    return path


def utf16(path: Path, n: int = 5, bom: bool = True) -> Path:
    text = "".join(json.dumps(lmsys(i, conversation=[{"role": "user", "content": f"Grüße {i}"},
                                                      {"role": "assistant", "content": "Danke schön."}])) + "\n"
                   for i in range(n))
    path.write_bytes(text.encode("utf-16" if bom else "utf-16-le"))
    return path


def deep(path: Path, depth: int = 10_000) -> Path:
    """One LMSYS line nested `depth` levels deep, between two good lines."""
    nested = "[" * depth + "]" * depth
    path.write_text(json.dumps(lmsys(0)) + "\n" + '{"conversation_id": "deep", "conversation": ' + nested + "}\n"
                    + json.dumps(lmsys(1)) + "\n")
    return path


def deep_array(path: Path, depth: int = 10_000) -> Path:
    nested = "[" * depth + "]" * depth
    path.write_text("[" + json.dumps(sharegpt(0)) + ', {"id": "deep", "conversations": ' + nested + "}, "
                    + json.dumps(sharegpt(1)) + "]")
    return path


def oasst_chain(path: Path, length: int = 5000) -> Path:
    rows = [{"message_id": f"m{i}", "parent_id": f"m{i - 1}" if i else None, "message_tree_id": "t1",
             "role": "prompter" if i % 2 == 0 else "assistant", "text": f"turn {i}", "lang": "en"}
            for i in range(length)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def oasst_cycle_and_reused_ids(path: Path) -> Path:
    """Tree A and tree B reuse the ids m1/m2 (each must stay in its own tree); m7 -> m8 -> m9 -> m7 loop."""
    rows = []
    for tree in ("A", "B"):
        rows += [{"message_id": "m1", "parent_id": None, "message_tree_id": tree, "role": "prompter",
                  "text": f"question of tree {tree}", "lang": "en"},
                 {"message_id": "m2", "parent_id": "m1", "message_tree_id": tree, "role": "assistant",
                  "text": f"answer of tree {tree}", "lang": "en"}]
    rows += [{"message_id": f"m{i}", "parent_id": f"m{7 + (i - 6) % 3}", "message_tree_id": "C",
              "role": "prompter", "text": f"loop {i}", "lang": "en"} for i in (7, 8, 9)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sharechat_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        for j, (role, text) in enumerate((("user", f"Share question {i}"), ("assistant", f"Share answer {i}"))):
            rows.append({"platform": "p", "url": f"https://x/{i}", "turns_count": 2, "message_index": j,
                         "role": role, "plain_text": text, "detected_language_final": "en"})
    return rows


def truncated_csv_gz(path: Path, n: int = 200) -> tuple[Path, int]:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(sharechat_rows(1)[0]))
    w.writeheader()
    w.writerows(sharechat_rows(n))
    data = gzip.compress(buf.getvalue().encode())
    path.write_bytes(data[:len(data) * 2 // 3])
    return path, n


def unclosed_quote_csv(path: Path) -> Path:
    """Row 2 opens a quote it never closes: 2 good conversations before, 2 after."""
    rows = sharechat_rows(4)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows[:4])
    buf.write('p,https://x/bad,2,0,user,"this quote never closes,en\n')
    w.writerows(rows[4:])
    path.write_text(buf.getvalue())
    return path


def lone_surrogate(path: Path) -> Path:
    path.write_text(json.dumps(lmsys(0)) + "\n" + json.dumps(lmsys(1))[:-1].replace(
        'Hello 1?', 'Hello \\ud800 1?') + "}\n")
    return path


def huge_message(path: Path, chars: int = 1_000_000) -> Path:
    path.write_text(json.dumps(lmsys(0)) + "\n" + json.dumps(lmsys(1, conversation=[
        {"role": "user", "content": "x" * chars}, {"role": "assistant", "content": "ok"}])) + "\n")
    return path


def write_all(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    truncated_array(out / "truncated.json")
    truncated_array(out / "truncated-pretty.json", pretty=True)
    with_bom(out / "bom.jsonl")
    utf16(out / "utf16.jsonl")
    deep(out / "deep.jsonl")
    oasst_chain(out / "oasst-chain.jsonl")
    oasst_cycle_and_reused_ids(out / "oasst-cycle.jsonl")
    truncated_csv_gz(out / "truncated.csv.gz")
    unclosed_quote_csv(out / "unclosed.csv")
    lone_surrogate(out / "surrogate.jsonl")
    huge_message(out / "huge.jsonl")


if __name__ == "__main__":
    write_all(Path(sys.argv[1]))
