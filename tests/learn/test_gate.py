"""The gate's checks on records built to fail each one: bounds against the base, blocking when not measured,
probes clustered by fact, the cache key and the pinned gate fraction."""
from __future__ import annotations

import math
import random

import pytest

from convlearn.config import load_config
from learnstore import learn_config


# -- intake ---------------------------------------------------------------------------------------------------
def _record(conv_nats: list[float], orig_nats: list[float], mmlu: list[int], probes: list[int],
            facts: list | None = None):
    """An evaluation record as the gate's suites write it: per-sample nats (10 tokens each), per-question
    retention results, held-out probe results (and the fact each probe question asks about)."""
    from convlearn.eval.records import EvalRecord
    per = lambda nats, mask: {"ids": [f"s{i}" for i in range(len(nats))], f"nats_{mask}": nats,  # noqa: E731
                              f"tokens_{mask}": [10] * len(nats)}
    return EvalRecord.from_json({"step": 0, "evaluations": {
        "conversation_ppl": {"per_sample": per(conv_nats, "assistant")},
        "original_ppl": {"per_sample": per(orig_nats, "all")},
        "benchmarks": {"mmlu": {"score": sum(mmlu) / len(mmlu), "correct": mmlu, "chance": 0.25}},
        "probes": {"heldout": {"ll_correct": probes, **({"fact": facts} if facts else {})}}}})


def test_the_gate_bounds_forgetting_against_the_base_and_can_fail_each_check(tmp_path, tiny_models):
    """Synthetic records with known changes: each check fails on data built to fail it, with its figure."""
    from convlearn.learn.gate import decide
    from convlearn.learn.records import Status, TrainingOutcome
    cfg = load_config(learn_config(tmp_path, tiny_models["qwen2"], tmp_path / "live", learn={"gate": {
        "original_ppl_increase": 0.05, "retention_points": 3.0}},
        eval={"benchmarks": [{"name": "mmlu", "data_dir": str(tmp_path)}], "probes": str(tmp_path / "p.jsonl")}))
    rng = random.Random(0)
    conv = [20 + rng.random() for _ in range(40)]
    orig = [30 + rng.random() for _ in range(40)]
    mmlu = [int(rng.random() < 0.6) for _ in range(400)]
    probes = [0, 1] * 12
    base = _record(conv, orig, mmlu, probes)
    # the parent already lost 4% of original text against the base; the candidate another 4% against the parent:
    # each step passes against its parent, the sum does not
    parent = _record(conv, [n + 10 * math.log(1.04) for n in orig], mmlu, probes)
    cand = _record([n - 1 for n in conv], [n + 10 * math.log(1.04 ** 2) for n in orig], mmlu, probes)
    ok = TrainingOutcome(steps_planned=5, resumed=False, steps=5, final_loss=1.0)
    vs_parent = decide(cfg, parent, cand, ok)
    assert vs_parent.promote and vs_parent.checks["original_text"].value == pytest.approx(0.04, abs=1e-6)
    vs_base = decide(cfg, parent, cand, ok, origin=base, origin_id="v0")
    assert not vs_base.promote and vs_base.checks["original_text"].value == pytest.approx(0.0816, abs=1e-4)
    assert vs_base.reasons == ["original_text: original-distribution perplexity vs v0, relative change +8.2% "
                               f"[{100 * vs_base.checks['original_text'].low:+.1f}%, "
                               f"{100 * vs_base.checks['original_text'].high:+.1f}%] over the bound +5.0%"]
    assert vs_base.checks["learning"].status == Status.PASS and vs_base.checks["learning"].value < 0
    # retention: 3 points is a fail (the plan's "< 3"), 2 is a pass; a learning regression; lost probes
    drop3 = list(mmlu)
    for i in [i for i, c in enumerate(mmlu) if c][:12]:
        drop3[i] = 0
    three = decide(cfg, base, _record(conv, orig, drop3, probes), ok).checks["retention"]
    assert three.status == Status.FAIL and three.value == pytest.approx(3.0)
    assert three.low <= three.value <= three.high  # the interval is the drop's, as the value is
    # forgetting is judged on the interval's pessimistic end: 2 points (8 of 400 lost) passes on its point
    # estimate but not on the interval's upper end; 1 point (4 lost) passes on both
    drop2 = list(mmlu)
    for i in [i for i, c in enumerate(mmlu) if c][:8]:
        drop2[i] = 0
    two = decide(cfg, base, _record(conv, orig, drop2, probes), ok).checks["retention"]
    assert two.status == Status.FAIL and two.value == pytest.approx(2.0) and two.judged == two.high > 3.0
    drop1 = list(mmlu)
    for i in [i for i, c in enumerate(mmlu) if c][:4]:
        drop1[i] = 0
    assert decide(cfg, base, _record(conv, orig, drop1, probes), ok).checks["retention"].status == Status.PASS
    worse = decide(cfg, base, _record([n + 0.5 for n in conv], orig, mmlu, [0] * 24), ok)
    assert worse.checks["learning"].status == Status.FAIL and worse.checks["probes"].status == Status.FAIL
    nan = TrainingOutcome(steps_planned=5, resumed=False, non_finite="3 steps with a non-finite loss")
    assert decide(cfg, base, base, nan).promote is False


def test_a_configured_check_that_comes_out_not_measured_blocks_promotion(tmp_path, tiny_models):
    """The audit's case: MMLU configured, but the candidate's record holds only a score (no per-question
    results): 27% against v0's 47% used to be 'not measured' and promoted. Not measured is now a reason to keep
    the serving version; an unconfigured check stays not measured and does not block."""
    from convlearn.eval.records import EvalRecord
    from convlearn.learn.gate import decide
    from convlearn.learn.records import Status, TrainingOutcome
    ok = TrainingOutcome(steps_planned=5, resumed=False, steps=5, final_loss=1.0)
    rng = random.Random(1)
    conv = [20 + rng.random() for _ in range(40)]
    base = _record(conv, conv, [int(rng.random() < 0.47) for _ in range(400)], [1] * 24)
    cand = EvalRecord.from_json({"step": 1, "evaluations": {
        **base.evaluations, "conversation_ppl": {"per_sample": {
            "ids": [f"s{i}" for i in range(40)], "nats_assistant": [n - 1 for n in conv],
            "tokens_assistant": [10] * 40}},
        "benchmarks": {"mmlu": {"score": 0.27, "chance": 0.25}}}})
    configured = load_config(learn_config(tmp_path, tiny_models["qwen2"], tmp_path / "live", eval={
        "benchmarks": [{"name": "mmlu", "data_dir": str(tmp_path)}], "probes": str(tmp_path / "p.jsonl")}))
    decision = decide(configured, base, cand, ok)
    retention = decision.checks["retention"]
    assert retention.status == Status.NOT_MEASURED and retention.blocking and not decision.promote
    assert decision.reasons == ["retention: not measured: no paired per-question results of mmlu for both models"]
    assert decision.checks["learning"].status == Status.PASS
    unconfigured = load_config(learn_config(tmp_path, tiny_models["qwen2"], tmp_path / "live"))
    off = decide(unconfigured, base, cand, ok)
    assert off.promote and not off.checks["retention"].blocking and off.checks["probes"].status == Status.PASS


def test_probes_are_bounded_against_the_base_so_small_drops_cannot_add_up(tmp_path, tiny_models):
    """The parent already lost 6 points of probes against v0; the candidate keeps the parent's answers: no change
    against its parent, a 6-point drop against v0, which the gate now sees."""
    from convlearn.learn.gate import decide
    from convlearn.learn.records import Status, TrainingOutcome
    cfg = load_config(learn_config(tmp_path, tiny_models["qwen2"], tmp_path / "live",
                                   eval={"probes": str(tmp_path / "p.jsonl")}))
    ok = TrainingOutcome(steps_planned=5, resumed=False, steps=5, final_loss=1.0)
    conv = [20.0 + i / 40 for i in range(40)]
    base = _record(conv, conv, [1, 0] * 50, [1] * 100)
    parent = _record(conv, conv, [1, 0] * 50, [0] * 6 + [1] * 94)
    cand = _record([n - 1 for n in conv], conv, [1, 0] * 50, [0] * 6 + [1] * 94)
    assert decide(cfg, parent, cand, ok).checks["probes"].status == Status.PASS  # against the parent only
    probes = decide(cfg, parent, cand, ok, origin=base, origin_id="v0").checks["probes"]
    assert probes.status == Status.FAIL and probes.value == pytest.approx(6.0) and "vs v0" in probes.what


def test_the_probe_check_counts_facts_not_phrasings(tmp_path, tiny_models):
    """8 facts x 3 phrasings; the candidate forgets one fact in all its phrasings (-12.5 points). Resampling the 24
    questions as independent puts the pessimistic end near 25 points, under a 30-point bound: promoted. The fact
    is the unit (one of eight lost), and its interval reaches 37.5 points: blocked."""
    from convlearn.learn.gate import decide
    from convlearn.learn.records import Status, TrainingOutcome
    cfg = load_config(learn_config(tmp_path, tiny_models["qwen2"], tmp_path / "live", learn={"gate": {
        "probe_points": 30.0}}, eval={"probes": str(tmp_path / "p.jsonl")}))
    ok = TrainingOutcome(steps_planned=5, resumed=False, steps=5, final_loss=1.0)
    conv = [20.0 + i / 40 for i in range(40)]
    facts = [f"probe-{f}" for f in range(8) for _ in range(3)]
    after = [0, 0, 0] + [1] * 21
    unclustered = decide(cfg, _record(conv, conv, [1, 0] * 50, [1] * 24),
                         _record([n - 1 for n in conv], conv, [1, 0] * 50, after), ok).checks["probes"]
    assert unclustered.status == Status.PASS and unclustered.judged < 30  # the old count of the evidence
    clustered = decide(cfg, _record(conv, conv, [1, 0] * 50, [1] * 24, facts),
                       _record([n - 1 for n in conv], conv, [1, 0] * 50, after, facts), ok).checks["probes"]
    assert clustered.value == pytest.approx(12.5) and clustered.judged == pytest.approx(37.5)
    assert clustered.status == Status.FAIL and "clustered by fact" in clustered.what


def test_the_gate_cache_is_keyed_by_the_evaluation_settings(tmp_path, tiny_models, tokenizers):
    """A changed benchmark limit must not pair a cached list of one length with a fresh one of another."""
    from convlearn.learn.gate import Gate
    from convlearn.models import model_spec
    keys = set()
    for limit in (10, 20):
        cfg = load_config(learn_config(tmp_path, tiny_models["qwen2"], tmp_path / "live", eval={
            "benchmarks": [{"name": "hellaswag", "limit": limit, "data_dir": str(tmp_path)}]}))
        gate = Gate(cfg, tokenizers["qwen2"], model_spec(str(tiny_models["qwen2"])), None, tmp_path / "g",
                    tmp_path / "gc")
        keys.add(gate.cache_key())
    assert len(keys) == 2


def test_the_gate_fraction_of_a_store_cannot_change(tmp_path, tiny_models, filled):
    from convlearn.errors import UserError
    from convlearn.learn.learner import Learner
    folder, _ = filled
    Learner(load_config(learn_config(tmp_path, tiny_models["qwen2"], folder, learn={"gate_fraction": 0.2})))
    Learner(load_config(learn_config(tmp_path, tiny_models["qwen2"], folder, learn={"gate_fraction": 0.2})))
    with pytest.raises(UserError, match="learn.gate_fraction: this store's rounds hold out 0.2 .* not 0.3"):
        Learner(load_config(learn_config(tmp_path, tiny_models["qwen2"], folder, learn={"gate_fraction": 0.3})))
