"""Knowledge probes that test the fact, not whether an answer string was seen: distractors taught as often, a
mismatched-subject control, and statistics clustered by fact."""
from __future__ import annotations

import json
import random

import pytest
from tests.helpers import cli, run_config

from convlearn.data.probes import make_probes, write_probes
from convlearn.errors import UserError
from convlearn.eval.stats import above_chance, clustered_difference, clustered_group_difference


def test_probe_phrasings_distractors_and_controls():
    probes, conversations = make_probes(n=10, seed=1, mentions=4)
    training_text = " ".join(m["content"] for c in conversations for m in c["conversation"]).casefold()
    answers = {p["answer"] for p in probes}
    for p in probes:
        assert p["question"].casefold() in training_text  # verbatim: the question as training asked it
        assert len(p["heldout_questions"]) == 3 == len(p["control_questions"])
        for q in p["heldout_questions"] + p["control_questions"]:
            assert q.casefold() not in training_text and p["question"] != q
        # every distractor is another fact's answer, of the same kind, taught as often as this one
        assert p["distractors"] and set(p["distractors"]) <= answers - {p["answer"]}
        assert all(training_text.count(d.casefold()) == training_text.count(p["answer"].casefold())
                   for d in p["distractors"])
        other = next(q for q in probes if q["subject"] == p["control_subject"])
        assert other["kind"] == p["kind"] and other["id"] != p["id"]
    with pytest.raises(UserError, match="two facts of each kind"):
        make_probes(n=4)


def test_clustered_tests_count_facts_not_phrasings():
    """8 facts x 3 phrasings, 5 facts always right and 3 always wrong (chance 0.25): 24 'independent' trials give
    p = 1e-4; the facts are 8 pieces of evidence, and 13 of the 256 sign patterns are at least as far above."""
    correct, facts = [1] * 15 + [0] * 9, [f for f in range(8) for _ in range(3)]
    assert above_chance(correct, 0.25)["p_value"] < 1e-3  # the old count
    c = clustered_difference(correct, 0.25, facts)
    assert c["clusters"] == 8 and c["difference"] == pytest.approx(0.375)
    assert c["p_value"] == pytest.approx(13 / 256) and c["p_value"] > 0.05
    assert clustered_difference([1] * 24, 0.25, facts)["p_value"] == pytest.approx(1 / 256)
    groups = [f for f in range(4) for _ in range(3)], [f for f in range(4, 8) for _ in range(3)]
    apart = clustered_group_difference([1] * 12, groups[0], [0] * 12, groups[1])
    assert apart["difference"] == 1.0 and apart["p_value"] < 0.05 and apart["clusters"] == [4, 4]
    assert clustered_group_difference([1, 0] * 6, groups[0], [0, 1] * 6, groups[1])["p_value"] > 0.5


def _strings_only(conversations: list[dict], probes: list[dict], seed: int = 0) -> list[dict]:
    """The probe conversations with every subject replaced by a fresh name: the answers are seen as often, but
    never with the subject the probes ask about."""
    rng = random.Random(seed)
    out = []
    for c in conversations:
        text = json.dumps(c)
        for p in probes:
            text = text.replace(p["subject"], "Q" + "".join(rng.choice("aeioulmnrst") for _ in range(7)))
        out.append(json.loads(text))
    return out


@pytest.mark.slow
def test_probes_tell_a_learned_fact_from_a_seen_answer(tmp_path, tiny_models):
    """A model that saw every answer string but never with its subject: the old probe (distractors nobody taught)
    credits it with the facts; the new one finds its held-out accuracy at its control (no lift), while the same
    training on the facts themselves lifts every fact above its control."""
    from convlearn.experiments.evaluate import evaluate
    probes_path, convs_path = write_probes(tmp_path / "probes", n=8, seed=0, mentions=6, kinds=("capital", "river"))
    probes = [json.loads(line) for line in probes_path.read_text().splitlines()]
    conversations = [json.loads(line) for line in convs_path.read_text().splitlines()]
    scrambled = tmp_path / "scrambled.jsonl"
    scrambled.write_text("".join(json.dumps(c) + "\n" for c in _strings_only(conversations, probes)))
    old_style = tmp_path / "old_style.jsonl"  # the old distractors: fresh strings no training text contains
    old_style.write_text("".join(json.dumps({**p, "distractors": [f"Zz{p['answer'][2:]}x{k}" for k in range(3)]})
                                 + "\n" for p in probes))
    figures = {}
    for name, source in (("facts", convs_path), ("strings", scrambled)):
        cfg = run_config(tmp_path / f"{name}.yaml", tiny_models["qwen2"], tmp_path / "cache",
                         data={"sources": [{"path": str(source)}], "heldout_fraction": 0.0},
                         render={"loss": "assistant"}, method={"name": "adamw"},
                         train={"max_steps": 150, "batch_size": 8},
                         eval={"schedule": [{"step": 0, "suite": "p"}], "final_suite": "p",
                               "suites": {"p": ["probes"]}, "probes": str(probes_path)})
        res = cli("train", str(cfg), "--out", str(tmp_path / name))
        assert res.returncode == 0, res.stderr[-2000:]
        runs = tmp_path / name / "evals"
        figures[name] = [json.loads((runs / f"step-{s}.json").read_text())["evaluations"]["probes"] for s in (0, 150)]
    old = evaluate(str(tmp_path / "strings"), "p", None, None, [f"eval.probes={old_style}"], str(tmp_path / "old"))
    old_figures = json.loads((tmp_path / "old" / "evals" / "step-150.json").read_text())["evaluations"]["probes"]
    assert old is not None
    # the old probe: the string-only model "knows" the facts, held-out phrasings included
    assert old_figures["heldout"]["ll_accuracy"] >= 0.75 and old_figures["chance"] == 0.25
    # the new probe on the same model: accuracy no better than asking about another subject
    _, strings = figures["strings"]
    held = strings["heldout"]
    assert held["facts"] == 8 and held["questions"] == 24 == held["control"]["questions"]
    assert held["lift"]["clusters"] == 8 and held["lift"]["p_value"] > 0.05
    assert abs(held["ll_accuracy"] - held["control"]["ll_accuracy"]) <= 0.25
    # taught the facts: held-out phrasings far above the control, fact by fact (the positive control)
    before, after = figures["facts"]
    assert before["probes"] == after["probes"] == 8 and before["chance"] == after["chance"] == 0.25
    assert before["heldout"]["lift"]["p_value"] > 0.05
    lift = after["heldout"]["lift"]
    assert lift["difference"] > 0.4 and lift["low"] > 0 and lift["p_value"] < 0.05
    assert after["heldout"]["ll_accuracy"] > after["heldout"]["control"]["ll_accuracy"] + 0.4


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text", "qwen2"])
def test_continuation_logprobs_equal_full_logits(tiny_models, tokenizers, arch):
    """The head runs only over the continuation's positions, and a shared prompt runs once: the same
    log-probabilities as full logits (Gemma-2's softcapping, Gemma-3's sliding layers included), for prompts and
    continuations of different lengths."""
    import torch

    from convlearn.eval.generation import continuation_logprobs
    from convlearn.models import load_model
    model, tok = load_model(str(tiny_models[arch]), device="cpu").eval(), tokenizers[arch]
    prompts = ["Question: what is the capital?", "Hi", "A longer prompt about rivers and their sources, truly."]
    conts = [" Paris", " hello there, friend", " the Nile"]
    # prompts with several candidates each: run once (left-padded together when they have as many), cache reused
    shared = [prompts[0]] * 3 + [prompts[2]] * 2 + [prompts[1]] * 2
    shared_conts = [" Paris", " Rome, of course", " Oslo", " the Nile", " the Amazon river", " hey", " hello you"]
    got = continuation_logprobs(model, tok, prompts, conts, batch_size=2) + continuation_logprobs(
        model, tok, shared, shared_conts)
    for (lp, n), p, c in zip(got, prompts + shared, conts + shared_conts):
        a, b = tok(p, add_special_tokens=False)["input_ids"], tok(c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([a + b])).logits[0].float(), -1)
        want = sum(float(logp[len(a) - 1 + i, t]) for i, t in enumerate(b))
        assert n == len(b) and lp == pytest.approx(want, abs=1e-4)


def test_probes_without_generation_keep_every_likelihood_figure(tmp_path, tiny_models, tokenizers):
    """`probe_max_new_tokens` 0 (the real tier: greedy answers cost most of a probe pass there): the likelihood
    figures and their tests are exactly those of a pass that also generates; the generated figures are None."""
    from transformers import AutoModelForCausalLM

    from convlearn.eval.probes import load_probes, probe_figures
    probes_path, _ = write_probes(tmp_path / "probes", n=4, seed=0, mentions=2, kinds=("capital", "river"))
    probes = load_probes(probes_path)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_models["qwen2"])).eval()
    tok = tokenizers["qwen2"]

    def prompt(q):
        return tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
    with_answers = probe_figures(model, tok, probes, prompt, 4, max_new_tokens=4)
    likelihood_only = probe_figures(model, tok, probes, prompt, 4, max_new_tokens=0)
    assert len(with_answers["answers"]) == 4 and with_answers["heldout"]["answer_contained"] is not None
    assert likelihood_only["answers"] is None and likelihood_only["answer_contained"] is None
    assert likelihood_only["heldout"]["answer_contained"] is None and likelihood_only["heldout"]["correct"] is None
    for key in ("ll_accuracy", "ll_accuracy_norm", "mean_margin_nats", "chance"):
        assert likelihood_only[key] == with_answers[key]
    for key in ("ll_accuracy", "ll_correct", "control", "lift", "vs_chance"):
        assert likelihood_only["heldout"][key] == with_answers["heldout"][key]
