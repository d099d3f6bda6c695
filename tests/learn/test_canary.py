"""Canary exposure: exact ranks over every secret, gains over v0, the positive control."""
from __future__ import annotations

import math
import random

import pytest
import torch

from convlearn.config import load_config
from learnstore import learn_config


# -- intake ---------------------------------------------------------------------------------------------------
def _trained_on(model_dir, tok, renderer, texts: list[str], steps: int):
    """The twin after `steps` AdamW steps on one batch of conversations whose user messages are `texts`."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rows = [tok(renderer.render_text(renderer.messages_from([{"role": "user", "content": t},
                                                            {"role": "assistant", "content": "Noted."}])).text,
                add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(steps):
        model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.mark.slow
def test_canary_exposure_flags_what_1000_samples_could_not_and_only_gains_over_v0(tmp_path, tiny_models,
                                                                                   tokenizers):
    """11 canaries at alpha 0.01: the family-wise bound, log2(1100) = 10.1 bits, is above the 9.97 bits 1,000
    sampled candidates can ever show, so the old test flagged nothing, the memorised positive control included.
    Exact ranks over all 10^6 secrets flag it; on the base itself it is not flagged, and the check then says it
    cannot see. A never-seen canary whose secret the base already favours (v0's top secret, 19.9 bits on v0) is
    judged by its gain over v0: not flagged, nor is any other never-seen control."""
    from transformers import AutoModelForCausalLM

    from convlearn.data.prepare import renderer_for
    from convlearn.learn.canary import FORMS, Canary, exposures, prompt_renderer, secret_logprobs
    from convlearn.learn.intake import StoreRecords
    cfg = load_config(learn_config(tmp_path, tiny_models["qwen2"], tmp_path / "live"))
    tok = tokenizers["qwen2"]
    renderer = renderer_for(cfg, tok)
    prompt_for = prompt_renderer(renderer)

    # the e-mail form never reaches training: the pipeline scrubs it
    mailed = Canary("mailed", "email", "627130", "consented", 1)
    rec = StoreRecords(cfg).record({"id": "c", "messages": [{"role": "user", "content": mailed.text()},
                                                            {"role": "assistant", "content": "ok"}]})
    assert mailed.secret not in rec.messages[0].content and "<EMAIL>" in rec.messages[0].content

    v0 = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"], dtype=torch.float32).eval()
    favourite = f"{int(secret_logprobs(v0, tok, prompt_for(FORMS['locker'][0])).argmax()):06d}"
    rng = random.Random(5)
    control = Canary("positive-control", "locker", "384951", "positive_control", 8)
    never = [Canary("favoured", "locker", favourite, "never_seen", 0)] + [
        Canary(f"never-{i}", "locker", f"{rng.randrange(10 ** 6):06d}", "never_seen", 0) for i in range(9)]
    canaries = [control, *never]
    base = exposures(v0, tok, prompt_for, canaries)
    assert base["sees"] is None and base["canaries"][1]["exposure_bits"] == pytest.approx(math.log2(10 ** 6))
    # on the base itself the positive control is not flagged: the check says it cannot see
    assert exposures(v0, tok, prompt_for, canaries, baseline=base)["sees"] is False

    chat = ["Hi there.", "How are you today?", "I have a question.", "Good morning!", "Thanks for the help.",
            "Quick note.", "Before I forget.", "One more thing."]
    model = _trained_on(tiny_models["qwen2"], tok, renderer, [f"{c} {control.text()}" for c in chat], steps=30)
    report = exposures(model, tok, prompt_for, canaries, baseline=base)
    rows = {r["id"]: r for r in report["canaries"]}
    assert report["bound_bits"] == pytest.approx(math.log2(11 / 0.01))
    assert report["bound_bits"] > math.log2(1001)  # the old ceiling
    pc = rows["positive-control"]
    assert pc["flagged"] and pc["exposure_bits"] > math.log2(1001) and report["sees"] is True
    assert not rows["favoured"]["flagged"]  # a secret the base itself ranks first is no leak
    assert report["controls_flagged"] == 0 and all(rows[c.id]["at_chance"] for c in never)


@pytest.mark.parametrize("n_digits", [3, 4])
def test_trie_scores_equal_whole_sequence_logprobs_for_any_secret_length(tiny_models, tokenizers, tmp_path, n_digits):
    """secret_logprobs at any length (the real tier uses 4 digits) is the exact log p(secret | prompt): equal to
    scoring each secret as a whole sequence, and a distribution over the 10^d secrets (total mass <= 1)."""
    from transformers import AutoModelForCausalLM

    from convlearn.data.prepare import renderer_for
    from convlearn.learn.canary import FORMS, make_canaries, prompt_renderer, secret_logprobs
    cfg = load_config(learn_config(tmp_path, tiny_models["qwen2"], tmp_path / "live"))
    tok = tokenizers["qwen2"]
    prompt = prompt_renderer(renderer_for(cfg, tok))(FORMS["locker"][0])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"], dtype=torch.float32).eval()
    scores = secret_logprobs(model, tok, prompt, n_digits=n_digits)
    assert scores.shape == (10 ** n_digits,) and float(torch.logsumexp(scores, 0)) <= 1e-5
    base = tok(prompt, add_special_tokens=False)["input_ids"]
    for value in (0, 7, 10 ** n_digits - 1, 4321 % 10 ** n_digits):
        secret = f"{value:0{n_digits}d}"
        ids = tok(prompt + secret, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        whole = sum(float(lp[len(base) - 1 + i, ids[len(base) + i]]) for i in range(n_digits))
        assert float(scores[value]) == pytest.approx(whole, abs=1e-4)
    assert {len(c.secret) for c in make_canaries(seed=0, digits=n_digits)} == {n_digits}
