"""Knowledge probes: invented facts that appear nowhere but in the training conversations we generate, so a
model can only know them by learning from those conversations.

`make_probes` returns the probe questions and conversations in the LMSYS schema that state each fact several
ways; both are deterministic for a seed. `convlearn data probes` writes them.

What makes a probe discriminative (an answer string the model has merely seen must not count as a known fact):
- Each probe's distractors are the answers of *other* facts of the same kind, taught as often as its own. A
  model that only learned which strings occur in training prefers none of them over the others: it scores
  chance. Only the subject -> answer binding lifts the score.
- `heldout_questions`: other phrasings in other contexts that no training conversation contains, so answering
  them shows the fact was learned, not the sentence (`question` is the verbatim one training asked).
- `control_questions`: the same held-out phrasings about a *different* subject (another fact of the same kind).
  Scored against this probe's candidates, the rate at which this probe's answer still wins is the control: what
  the model says regardless of the subject. Learning shows as accuracy above the control, fact by fact.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from ..errors import UserError

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


def link_probes(probes: list[dict], distractors: int = 3, seed: int = 0) -> list[dict]:
    """Give each probe its distractors (answers of other probes in `probes` of the same value kind, so taught as
    often when the list is what training taught) and its control questions (the held-out phrasings about another
    probe's subject of the same kind, the next one in the list's order). Call it on exactly the facts that are
    taught together: a distractor that was never taught would lose to a seen answer for the wrong reason."""
    rng = random.Random(seed)
    out = []
    for p in probes:
        same_value = [q["answer"] for q in probes if q["value_kind"] == p["value_kind"] and q["answer"] != p["answer"]]
        same_kind = [q for q in probes if q["kind"] == p["kind"]]
        other = same_kind[(same_kind.index(p) + 1) % len(same_kind)] if len(same_kind) > 1 else None
        templates = _HELDOUT[p["kind"]]
        out.append({**p, "distractors": rng.sample(same_value, min(distractors, len(same_value))),
                    "control_subject": other["subject"] if other else None,
                    "control_questions": [t.format(x=other["subject"]) for t in templates] if other else []})
    return out


KINDS = tuple(k[0] for k in _KINDS)


def make_probes(n: int = 20, seed: int = 0, mentions: int = 4, distractors: int = 3,
                kinds: tuple[str, ...] = KINDS) -> tuple[list, list]:
    """(probes, conversations): n facts cycling through `kinds`, each stated in `mentions` conversations. Answers
    are distinct within a value kind (two facts with one answer would make each other's distractor correct)."""
    table = [k for k in _KINDS if k[0] in kinds]
    if len(table) != len(set(kinds)) or n < 2 * len(table):
        raise UserError(f"knowledge probes need kinds among {KINDS} and n >= 2 x kinds ({2 * len(table)}): two facts "
                         f"of each kind, so every probe has a distractor taught as often and a control subject")
    rng = random.Random(seed)
    probes, conversations, seen, answers = [], [], set(), set()
    while len(probes) < n:
        kind, question, statement, value_kind = table[len(probes) % len(table)]
        subject = _name(rng) + ("ia" if kind in ("capital", "river", "color") else "")
        answer = _value(rng, value_kind)
        if subject in seen or (value_kind, answer) in answers:
            continue
        seen.add(subject)
        answers.add((value_kind, answer))
        q = question.format(x=subject)
        fact = statement.format(x=subject, a=answer)
        pid = f"probe-{len(probes):03d}"
        probes.append({"id": pid, "kind": kind, "value_kind": value_kind, "subject": subject, "question": q,
                       "heldout_questions": [h.format(x=subject) for h in _HELDOUT[kind]], "answer": answer,
                       "fact": fact})
        for j in range(mentions):
            user = _USER_PARAPHRASES[j % len(_USER_PARAPHRASES)].format(q=q, ql=q[0].lower() + q[1:])
            reply = fact if j % 2 == 0 else f"{answer}. {fact}"
            conversations.append({"conversation_id": f"{pid}-{j}", "model": "probe", "language": "English",
                                  "conversation": [{"role": "user", "content": user},
                                                   {"role": "assistant", "content": reply}],
                                  "turn": 1, "redacted": False, "openai_moderation": []})
    rng.shuffle(conversations)
    return link_probes(probes, distractors, seed), conversations


def write_probes(out: str | Path, n: int = 20, seed: int = 0, mentions: int = 4,
                 kinds: tuple[str, ...] = KINDS) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    probes, conversations = make_probes(n, seed, mentions, kinds=kinds)
    probes_path, conv_path = out / "probes.jsonl", out / "probe_conversations.jsonl"
    probes_path.write_text("".join(json.dumps(p) + "\n" for p in probes))
    conv_path.write_text("".join(json.dumps(c) + "\n" for c in conversations))
    return probes_path, conv_path
