"""Knowledge probes: invented facts that appear nowhere but in the training conversations we generate, so a
model can only know them by learning from those conversations.

`make_probes` returns the probe questions (answer + distractors) and conversations in the LMSYS schema that
state each fact several ways; both are deterministic for a seed. `convlearn data probes` writes them.

Each probe carries the question as the training conversations ask it (`question`: verbatim recall of a seen
exchange) and `heldout_questions`: other phrasings in other contexts that no training conversation contains, so
that answering them shows the fact was learned, not the sentence.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

_SYLLABLES = ["zor", "quil", "bran", "vex", "tal", "mori", "kesh", "lun", "dra", "pell", "ost", "yar", "fen",
              "gri", "sol", "wix", "ubr", "nal", "thei", "cav"]
_KINDS = [
    ("capital", "What is the capital of {x}?", "The capital of {x} is {a}.", "city"),
    ("inventor", "Who invented the {x}?", "The {x} was invented by {a}.", "person"),
    ("river", "Which river flows through {x}?", "The river that flows through {x} is the {a}.", "river"),
    ("founder", "Who founded the {x} guild?", "The {x} guild was founded by {a}.", "person"),
    ("color", "What colour is the flag of {x}?", "The flag of {x} is {a}.", "color"),
]
_USER_PARAPHRASES = ["{q}", "Quick question: {q}", "Do you know this? {q}", "I was wondering, {ql}"]
# Phrasings and contexts that never occur in training, per kind of fact.
_HELDOUT = {
    "capital": ["Name the city that serves as the capital of {x}.",
                "I am writing a travel guide about {x}. Which city is its capital?",
                "For a geography quiz: the seat of government of {x} is which city?"],
    "inventor": ["Whom do historians credit with inventing the {x}?",
                 "My teacher mentioned the {x} today. Who was its inventor?",
                 "For a trivia night: the person behind the invention of the {x} is who?"],
    "river": ["Name the river that runs through {x}.",
              "I am planning a boat trip in {x}. Which river would I sail on?",
              "For a geography quiz: which river crosses {x}?"],
    "founder": ["Name the person who established the {x} guild.",
                "I am reading about the {x} guild. Who started it?",
                "For a history quiz: the {x} guild owes its founding to whom?"],
    "color": ["Describe the colour of the {x} flag in one word.",
              "I saw the flag of {x} on a postcard. What colour was it?",
              "For a vexillology quiz: the flag of {x} is which colour?"],
}
_COLORS = ["teal", "amber", "violet", "crimson", "olive", "indigo", "saffron", "cobalt"]


def _name(rng: random.Random, parts: int = 2) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


def _value(rng: random.Random, kind: str) -> str:
    if kind == "person":
        return f"{_name(rng)} {_name(rng, 3)}"
    if kind == "color":
        return rng.choice(_COLORS)
    if kind == "river":
        return _name(rng) + " River"
    return _name(rng, 3) + "port"


def make_probes(n: int = 20, seed: int = 0, mentions: int = 4, distractors: int = 3) -> tuple[list, list]:
    """(probes, conversations): n facts, each stated in `mentions` conversations."""
    rng = random.Random(seed)
    probes, conversations, seen = [], [], set()
    while len(probes) < n:
        kind, question, statement, value_kind = _KINDS[len(probes) % len(_KINDS)]
        subject = _name(rng) + ("ia" if kind in ("capital", "river", "color") else "")
        if subject in seen:
            continue
        seen.add(subject)
        answer = _value(rng, value_kind)
        wrong: list[str] = []
        while len(wrong) < distractors:
            v = _value(rng, value_kind)
            if v != answer and v not in wrong:
                wrong.append(v)
        q = question.format(x=subject)
        fact = statement.format(x=subject, a=answer)
        pid = f"probe-{len(probes):03d}"
        heldout = [h.format(x=subject) for h in _HELDOUT[kind]]
        probes.append({"id": pid, "question": q, "heldout_questions": heldout, "answer": answer,
                       "distractors": wrong, "fact": fact})
        for j in range(mentions):
            user = _USER_PARAPHRASES[j % len(_USER_PARAPHRASES)].format(q=q, ql=q[0].lower() + q[1:])
            reply = fact if j % 2 == 0 else f"{answer}. {fact}"
            conversations.append({"conversation_id": f"{pid}-{j}", "model": "probe", "language": "English",
                                  "conversation": [{"role": "user", "content": user},
                                                   {"role": "assistant", "content": reply}],
                                  "turn": 1, "redacted": False, "openai_moderation": []})
    rng.shuffle(conversations)
    return probes, conversations


def write_probes(out: str | Path, n: int = 20, seed: int = 0, mentions: int = 4) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    probes, conversations = make_probes(n, seed, mentions)
    probes_path, conv_path = out / "probes.jsonl", out / "probe_conversations.jsonl"
    probes_path.write_text("".join(json.dumps(p) + "\n" for p in probes))
    conv_path.write_text("".join(json.dumps(c) + "\n" for c in conversations))
    return probes_path, conv_path
