"""Response quality on held-out prompts: greedy answers next to the references (a JSONL a person can read),
ROUGE-L (the `rouge-score` package; `evaluate.load` would fetch its metric script from the hub), reference
log-likelihood, and an optional pairwise judge against the step-0 answers at any OpenAI-compatible endpoint.
"""
from __future__ import annotations

import json
import os
import random
import re
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from .generation import continuation_logprobs, greedy_answers

if TYPE_CHECKING:
    from ..config import EvalConfig


def rouge_l(answers: list[str], references: list[str]) -> list[float]:
    from rouge_score import rouge_scorer  # 2.3 s to import (nltk): only when quality runs
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(r, a)["rougeL"].fmeasure for a, r in zip(answers, references)]


def response_quality(model, tokenizer, pairs: list[dict], eval_cfg: EvalConfig, evals_dir: Path, step: int) -> dict:
    prompts = [p["prompt"] for p in pairs]
    refs = [p["reference"] for p in pairs]
    answers = greedy_answers(model, tokenizer, prompts, eval_cfg.max_new_tokens, eval_cfg.batch_size)
    rouge = rouge_l(answers, refs)
    ref_lp = continuation_logprobs(model, tokenizer, prompts, refs, eval_cfg.batch_size)
    rows = [{**{k: p[k] for k in ("conversation_id", "turn", "domain")}, "prompt": p["prompt"],
             "reference": p["reference"], "answer": a, "rougeL": r, "reference_logprob": lp, "reference_tokens": n}
            for p, a, r, (lp, n) in zip(pairs, answers, rouge, ref_lp)]
    evals_dir.mkdir(parents=True, exist_ok=True)
    path = evals_dir / f"answers-step-{step}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tokens = sum(n for _, n in ref_lp)
    out = {"prompts": len(rows), "rougeL": sum(rouge) / len(rouge) if rouge else None,
           "reference_nll_per_token": -sum(lp for lp, _ in ref_lp) / tokens if tokens else None,
           "reference_tokens": tokens, "answers_file": path.name,
           "empty_answers": sum(1 for a in answers if not a)}
    out["judge"] = judge_against_baseline(rows, evals_dir, step, eval_cfg.judge)
    return out


_VERDICT = re.compile(r"\b(A|B|TIE)\b", re.I)


def judge_against_baseline(rows: list[dict], evals_dir: Path, step: int, judge) -> dict:
    """Win rate of these answers against the step-0 answers to the same prompts, by an LLM judge.

    Half the pairs show the new answer first, half second (seeded), so position bias cancels; ties count
    half."""
    if judge.base_url is None:
        return {"skipped": "no judge configured (eval.judge.base_url is null)"}
    baseline_path = evals_dir / "answers-step-0.jsonl"
    if step == 0 or not baseline_path.is_file():
        return {"skipped": "this is the baseline" if step == 0 else "no step-0 answers to compare with"}
    baseline = {(r["conversation_id"], r["turn"]): r["answer"]
                for r in map(json.loads, baseline_path.read_text().splitlines())}
    candidates = [(row, baseline[(row["conversation_id"], row["turn"])]) for row in rows[:judge.max_pairs]
                  if (row["conversation_id"], row["turn"]) in baseline]
    firsts = [i % 2 == 0 for i in range(len(candidates))]  # half the pairs each way: position bias cancels
    random.Random(step).shuffle(firsts)
    wins = ties = losses = errors = 0
    for (row, old), new_first in zip(candidates, firsts):
        a, b = (row["answer"], old) if new_first else (old, row["answer"])
        try:
            verdict = _ask_judge(judge, row["prompt"], row["reference"], a, b)
        except (OSError, ValueError, KeyError) as e:
            errors += 1
            last_error = f"{e.__class__.__name__}: {e}"
            continue
        if verdict == "TIE":
            ties += 1
        elif (verdict == "A") == new_first:
            wins += 1
        else:
            losses += 1
    judged = wins + ties + losses
    out = {"model": judge.model, "pairs": judged, "wins": wins, "ties": ties, "losses": losses,
           "errors": errors, "win_rate": (wins + 0.5 * ties) / judged if judged else None}
    if errors:
        out["last_error"] = last_error
    return out


def _ask_judge(judge, prompt: str, reference: str, a: str, b: str) -> str:
    content = ("You compare two assistant responses to the same conversation. Reply with exactly one of: A, B, "
               "TIE.\n\n[Conversation, as the model saw it]\n" + prompt + "\n\n[Reference response]\n" + reference
               + "\n\n[Response A]\n" + a + "\n\n[Response B]\n" + b + "\n\nWhich response is better?")
    body = json.dumps({"model": judge.model, "temperature": 0,
                       "messages": [{"role": "user", "content": content}]}).encode()
    req = urllib.request.Request(judge.base_url.rstrip("/") + "/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {os.environ.get(judge.api_key_env, '')}"})
    with urllib.request.urlopen(req, timeout=judge.timeout_s) as resp:
        text = json.loads(resp.read())["choices"][0]["message"]["content"]
    m = _VERDICT.search(text)
    if not m:
        raise ValueError(f"unreadable verdict {text[:60]!r}")
    return m.group(1).upper()
