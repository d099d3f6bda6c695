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


def probe_figures(model, tokenizer, probes: list[dict], render_prompt, batch_size: int = 8,
                  max_new_tokens: int = 32) -> dict:
    prompts = [render_prompt(p["question"]) for p in probes]
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
    acc = [max(range(len(s)), key=lambda k: s[k][0]) == 0 for s in per_probe]
    acc_norm = [max(range(len(s)), key=lambda k: s[k][0] / max(1, s[k][1])) == 0 for s in per_probe]
    margins = [s[0][0] - max(x[0] for x in s[1:]) for s in per_probe]
    n = len(probes)
    return {"probes": n, "exact_match": sum(exact) / n, "answer_contained": sum(contains) / n,
            "ll_accuracy": sum(acc) / n, "ll_accuracy_norm": sum(acc_norm) / n,
            "mean_margin_nats": sum(margins) / n,
            "answers": [{"id": p.get("id", i), "answer": a, "correct": c}
                        for i, (p, a, c) in enumerate(zip(probes, answers, contains))]}
