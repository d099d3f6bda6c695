"""Knowledge probes: did the model pick up facts that only its training conversations contain?

Per probe: the greedy answer to the question (exact match and containment of the normalized answer), and the
log-likelihood of the true answer against the distractors as the assistant's reply (accuracy, per-token
normalized accuracy, mean margin).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import UserError
from .generation import continuation_logprobs, greedy_answers


def load_probes(path: str | Path) -> list[dict]:
    probes = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for i, p in enumerate(probes):
        if not {"question", "answer", "distractors"} <= set(p):
            raise UserError(f"{path}: probe {i} needs question, answer and distractors")
    return probes


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def _ask(model, tokenizer, probes: list[dict], questions: list[str], render_prompt, batch_size: int,
         max_new_tokens: int) -> dict:
    """Greedy answers to one question per probe (exact match, answer contained) and the likelihood of the
    true answer against the distractors as the assistant's reply (accuracy, normalized accuracy, margin)."""
    prompts = [render_prompt(q) for q in questions]
    answers = greedy_answers(model, tokenizer, prompts, max_new_tokens, batch_size)
    exact = [_norm(a) == _norm(p["answer"]) for a, p in zip(answers, probes)]
    contains = [f" {_norm(p['answer'])} " in f" {_norm(a)} " for a, p in zip(answers, probes)]
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
    return {"answers": answers, "exact": exact, "contains": contains,
            "acc": [max(range(len(s)), key=lambda k: s[k][0]) == 0 for s in per_probe],
            "acc_norm": [max(range(len(s)), key=lambda k: s[k][0] / max(1, s[k][1])) == 0 for s in per_probe],
            "margins": [s[0][0] - max(x[0] for x in s[1:]) for s in per_probe]}


def probe_figures(model, tokenizer, probes: list[dict], render_prompt, batch_size: int = 8,
                  max_new_tokens: int = 32) -> dict:
    """Verbatim recall (the question as training asked it) and, where probes carry `heldout_questions`, the same
    figures over phrasings and contexts training never saw (the evidence that a fact was learned). `chance` is
    the likelihood accuracy of guessing among the answer and its distractors."""
    n = len(probes)
    seen = _ask(model, tokenizer, probes, [p["question"] for p in probes], render_prompt, batch_size,
                max_new_tokens)
    out = {"probes": n, "exact_match": sum(seen["exact"]) / n, "answer_contained": sum(seen["contains"]) / n,
           "ll_accuracy": sum(seen["acc"]) / n, "ll_accuracy_norm": sum(seen["acc_norm"]) / n,
           "mean_margin_nats": sum(seen["margins"]) / n,
           "chance": sum(1 / (1 + len(p["distractors"])) for p in probes) / n,
           "answers": [{"id": p.get("id", i), "answer": a, "correct": c}
                       for i, (p, a, c) in enumerate(zip(probes, seen["answers"], seen["contains"]))]}
    pairs = [(p, q) for p in probes for q in p.get("heldout_questions", [])]
    if pairs:
        held = _ask(model, tokenizer, [p for p, _ in pairs], [q for _, q in pairs], render_prompt, batch_size,
                    max_new_tokens)
        m = len(pairs)
        out["heldout"] = {"questions": m, "answer_contained": sum(held["contains"]) / m,
                          "exact_match": sum(held["exact"]) / m, "ll_accuracy": sum(held["acc"]) / m,
                          "ll_accuracy_norm": sum(held["acc_norm"]) / m, "mean_margin_nats": sum(held["margins"]) / m,
                          "correct": [int(c) for c in held["contains"]], "ll_correct": [int(c) for c in held["acc"]]}
    return out
