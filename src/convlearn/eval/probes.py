"""Knowledge probes: did the model pick up facts that only its training conversations contain?

Per probe: the greedy answer to the question (exact match and containment of the normalized answer), and the
log-likelihood of the true answer against the distractors as the assistant's reply (accuracy, per-token
normalized accuracy, mean margin). The distractors are other facts' answers taught as often
(data/probes.py), so a model that has only seen the answer strings scores chance.

The evidence that a fact was learned is read on the held-out phrasings, beside two references:
- `control`: the same phrasings about a different subject, scored against this probe's candidates: how often its
  answer wins whatever the subject is. Learning is accuracy above the control.
- `chance`: 1 / (1 + distractors).
Both comparisons are clustered by fact (`lift`, `vs_chance`: per-fact means, a bootstrap over facts and a
sign-flip p-value): three phrasings of one fact are one piece of evidence, not three.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import UserError
from .generation import continuation_logprobs, greedy_answers
from .stats import clustered_difference


def load_probes(path: str | Path) -> list[dict]:
    probes = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for i, p in enumerate(probes):
        if not {"question", "answer", "distractors"} <= set(p):
            raise UserError(f"{path}: probe {i} needs question, answer and distractors")
    return probes


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def _likelihood_choice(model, tokenizer, probes: list[dict], prompts: list[str], batch_size: int) -> dict:
    """The likelihood of the true answer against the distractors as the assistant's reply to each prompt
    (accuracy, normalized accuracy, margin), one prompt per probe."""
    flat_prompts, flat_cands, owners = [], [], []
    for i, (p, prompt) in enumerate(zip(probes, prompts)):
        for cand in [p["answer"], *p["distractors"]]:
            flat_prompts.append(prompt)
            flat_cands.append(cand)
            owners.append(i)
    scores = continuation_logprobs(model, tokenizer, flat_prompts, flat_cands, batch_size)
    per_probe: list[list[tuple[float, int]]] = [[] for _ in probes]
    for i, s in zip(owners, scores):
        per_probe[i].append(s)
    return {"acc": [max(range(len(s)), key=lambda k: s[k][0]) == 0 for s in per_probe],
            "acc_norm": [max(range(len(s)), key=lambda k: s[k][0] / max(1, s[k][1])) == 0 for s in per_probe],
            "margins": [s[0][0] - max(x[0] for x in s[1:]) for s in per_probe]}


def _ask(model, tokenizer, probes: list[dict], questions: list[str], render_prompt, batch_size: int,
         max_new_tokens: int) -> dict:
    """Greedy answers to one question per probe (exact match, answer contained) and the likelihood choice;
    `max_new_tokens` 0: the likelihood choice alone (no answers generated, their figures None)."""
    prompts = [render_prompt(q) for q in questions]
    choice = _likelihood_choice(model, tokenizer, probes, prompts, batch_size)
    if max_new_tokens == 0:
        return {"answers": None, "exact": None, "contains": None, **choice}
    answers = greedy_answers(model, tokenizer, prompts, max_new_tokens, batch_size)
    return {"answers": answers, "exact": [_norm(a) == _norm(p["answer"]) for a, p in zip(answers, probes)],
            "contains": [f" {_norm(p['answer'])} " in f" {_norm(a)} " for a, p in zip(answers, probes)], **choice}


def _share(flags: list[bool] | None, n: int) -> float | None:
    return None if flags is None else sum(flags) / n


def _chance(p: dict) -> float:
    return 1 / (1 + len(p["distractors"]))


def probe_figures(model, tokenizer, probes: list[dict], render_prompt, batch_size: int = 8,
                  max_new_tokens: int = 32) -> dict:
    """Verbatim recall (the question as training asked it) and, where probes carry `heldout_questions`, the same
    figures over phrasings and contexts training never saw, with the mismatched-subject control where probes
    carry `control_questions` (see the module's docstring)."""
    for p in probes:
        if not p["distractors"]:
            raise UserError(f"probe {p.get('id')}: no distractors (a choice of one answer measures nothing)")
    n = len(probes)
    seen = _ask(model, tokenizer, probes, [p["question"] for p in probes], render_prompt, batch_size,
                max_new_tokens)
    out = {"probes": n, "exact_match": _share(seen["exact"], n), "answer_contained": _share(seen["contains"], n),
           "ll_accuracy": sum(seen["acc"]) / n, "ll_accuracy_norm": sum(seen["acc_norm"]) / n,
           "mean_margin_nats": sum(seen["margins"]) / n, "chance": sum(_chance(p) for p in probes) / n,
           "answers": None if seen["answers"] is None else [
               {"id": p.get("id", i), "answer": a, "correct": c}
               for i, (p, a, c) in enumerate(zip(probes, seen["answers"], seen["contains"]))]}
    pairs = [(i, p, q) for i, p in enumerate(probes) for q in p.get("heldout_questions", [])]
    if not pairs:
        return out
    facts = [p.get("id", i) for i, p, _ in pairs]
    held = _ask(model, tokenizer, [p for _, p, _ in pairs], [q for _, _, q in pairs], render_prompt, batch_size,
                max_new_tokens)
    m = len(pairs)
    correct = [int(c) for c in held["acc"]]
    out["heldout"] = {"questions": m, "facts": len(set(facts)), "answer_contained": _share(held["contains"], m),
                      "exact_match": _share(held["exact"], m), "ll_accuracy": sum(correct) / m,
                      "ll_accuracy_norm": sum(held["acc_norm"]) / m, "mean_margin_nats": sum(held["margins"]) / m,
                      "correct": None if held["contains"] is None else [int(c) for c in held["contains"]],
                      "ll_correct": correct, "fact": facts,
                      "vs_chance": clustered_difference(correct, [_chance(p) for _, p, _ in pairs], facts)}
    control = [(i, p, q) for i, p in enumerate(probes) for q in p.get("control_questions", [])]
    if control:
        ctrl = _likelihood_choice(model, tokenizer, [p for _, p, _ in control],
                                  [render_prompt(q) for _, _, q in control], batch_size)
        ctrl_correct = [int(c) for c in ctrl["acc"]]
        by_fact: dict = {}
        for (i, p, _), c in zip(control, ctrl_correct):
            by_fact.setdefault(p.get("id", i), []).append(c)
        # paired per fact: its held-out accuracy against its control accuracy (phrasing counts may differ)
        paired = [(f, c) for f, c in zip(facts, correct) if f in by_fact]
        ctrl_mean = {f: sum(v) / len(v) for f, v in by_fact.items()}
        out["heldout"]["control"] = {"questions": len(control), "ll_accuracy": sum(ctrl_correct) / len(control),
                                     "ll_correct": ctrl_correct, "fact": [p.get("id", i) for i, p, _ in control]}
        out["heldout"]["lift"] = clustered_difference([float(c) for _, c in paired],
                                                      [ctrl_mean[f] for f, _ in paired], [f for f, _ in paired])
    return out
