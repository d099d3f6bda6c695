"""The online learner: intake from the store (consent, exactly once, drops with reasons, scrubbing), the
gate, rounds promoted or rejected, canary exposure. Kills, hot swap and the live demo: test_learn_faults.py."""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from convlearn.config import load_config
from convlearn.store import Store, default_url
from helpers import cli_here
from learnstore import chats, learn_config, talk


# -- intake ---------------------------------------------------------------------------------------------------
def test_intake_reads_consent_only_with_every_drop_named_and_secrets_scrubbed(tmp_path, tiny_models):
    from convlearn.learn.intake import heldout_records, read_round
    folder = tmp_path / "live"
    store = Store(default_url(folder))
    keys = {n: store.add_key(n, consent_default=n != "private") for n in ("a", "b", "private", "spam")}
    (tmp_path / "blocklist.txt").write_text("# secrets the scrubber does not know\nforbidden topic\n")
    cfg = load_config(learn_config(tmp_path, tiny_models["qwen2"], folder, learn={
        "gate_fraction": 0.0, "per_key_cap": 3, "flood_conversations": 2, "blocklist": str(tmp_path / "blocklist.txt")},
        data={"languages": ["en"], "max_message_chars": 500}))
    talk(store, keys["a"], [("My mail is jane.doe@example.org, call +1 415 555 0100", "Noted.")], "mail")
    first = talk(store, keys["a"], [("What is the capital of France?", "Paris.")], "ok1")
    flood = "Visit cheap-watches dot example for the best deals today"
    for i in range(4):  # the same text in four conversations: two are kept, two are a flood
        talk(store, keys["b"], [(f"{flood.upper() if i % 2 else flood} {i}!", "Hm.")], f"fl{i}")
    for i, topic in enumerate(["the weather", "trains", "bread", "chess", "rivers"]):  # over its cap of 3
        talk(store, keys["spam"], [(f"Tell me something about {topic}, please", "Sure.")], f"sp{i}")
    talk(store, keys["a"], [("Let us discuss the forbidden topic now please", "No.")], "mod")
    talk(store, keys["a"], [("x" * 600, "long")], "long")
    talk(store, keys["a"], [("Wie spät ist es heute Abend in Berlin, bitte sag es mir genau?", "Acht.")], "de")
    down = talk(store, keys["a"], [("Tell me a joke about compilers, a good one", "No.")], "down")
    store.add_feedback(store.key_for(keys["a"]), "down-0", -1, None)
    talk(store, keys["private"], [("My private fact: the vault opens on Tuesdays.", "OK.")], "priv")

    upto = store.last_message_id()
    intake = read_round(store, cfg, 0, upto, seed=0)
    rec = intake.counts()
    assert rec.read == 15 and rec.kept == 2 + 2 + 3  # the private conversation is never read
    assert rec.dropped == {"downvoted": 1, "key_cap": 2, "language": 1, "message_too_long": 1,
                              "moderation": 1, "near_duplicate_flood": 2}
    assert rec.scrubbed == {"email": 1, "phone": 1}
    text = json.dumps([r.to_dict() for r in intake.records])
    assert "jane.doe" not in text and "555 0100" not in text and "<EMAIL>" in text and "vault" not in text
    assert down not in text

    # continued after the cursor: the whole conversation comes back as context, only the new turn is new
    cid = store.record_exchange(store.key_for(keys["a"]), [
        {"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"}], "Rome.", "ok1-1", "v0")
    assert cid == first
    later = read_round(store, cfg, upto, store.last_message_id(), seed=0)
    assert later.counts().read == 1 and len(later.records) == 1
    row = later.records[0]
    assert row.id == cid and row.first_trained == 2 and len(row.messages) == 4
    assert read_round(store, cfg, store.last_message_id(), store.last_message_id(), seed=0).read == 0

    # the gate's slice is disjoint from training (by a hash of the conversation id)
    cfg2 = load_config(learn_config(tmp_path, tiny_models["qwen2"], folder, learn={"gate_fraction": 0.5}))
    train_ids = {r.id for r in read_round(store, cfg2, 0, upto, seed=0).records}
    held_ids = {r.id for r in heldout_records(store, cfg2, upto)}
    assert held_ids and train_ids and not held_ids & train_ids


def test_a_continued_conversation_trains_only_its_new_turns(tmp_path, tiny_models, tokenizers):
    """`Conversation.first_trained`: the earlier turns are context (no loss), the new ones are trained on."""
    from convlearn.data.normalize import make_conversation
    from convlearn.data.prepare import renderer_for
    cfg = load_config(learn_config(tmp_path, tiny_models["qwen2"], tmp_path / "live", render={"loss": "all"}))
    renderer = renderer_for(cfg, tokenizers["qwen2"])
    pairs = [("user", "What is the capital of France?"), ("assistant", "Paris."), ("user", "And of Italy?"),
             ("assistant", "Rome.")]
    whole = make_conversation("c", "store", pairs, Counter())
    cont = make_conversation("c", "store", pairs, Counter())
    cont.first_trained = 2
    (a,), (b,) = renderer.render(whole), renderer.render(cont)
    assert a.input_ids.tolist() == b.input_ids.tolist()
    trained = tokenizers["qwen2"].decode([t for t, m in zip(b.input_ids, b.token_mask) if m])
    assert "Italy" in trained and "Rome" in trained and "France" not in trained and "Paris" not in trained
    assert sum(b.token_mask) < sum(a.token_mask)


def test_learn_trains_layerwise_galore_online_unless_the_config_says_otherwise(tmp_path, tiny_models):
    from convlearn.learn.learner import learn_config
    minimal = {"model": {"name": str(tiny_models["qwen2"])}, "data": {"sources": [{"path": "chatterbot"}]}}
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump(minimal))
    cfg = learn_config(str(bare), [])
    assert (cfg.method.name, cfg.method.layerwise, cfg.train.batch_size, cfg.train.order) == \
        ("galore", True, 2, "stream")
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump({**minimal, "method": {"layerwise": False}, "train": {"batch_size": 8}}))
    cfg = learn_config(str(own), ["train.order=shuffled"])
    assert (cfg.method.layerwise, cfg.train.batch_size, cfg.train.order) == (False, 8, "shuffled")


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


def test_the_reservoir_replays_only_conversations_that_were_trained_on(tmp_path, tiny_models, filled):
    """Round 1 drops blocklisted, downvoted and flooding conversations; round 2's reservoir samples from what
    round 1 trained on only: none of the dropped ones comes back."""
    from convlearn.learn.learner import Learner
    from convlearn.learn.records import RoundPlan
    folder, keys = filled
    store = Store(default_url(folder))
    sharing = keys["sharing"]
    (tmp_path / "block.txt").write_text("forbidden\n")
    words = ["parsers", "linkers", "debuggers", "assemblers"]
    dropped = {talk(store, sharing, [(f"Please discuss the forbidden subject of {w}", "No.")], f"b{i}")
               for i, w in enumerate(words)}
    for i, w in enumerate(words):
        dropped.add(talk(store, sharing, [(f"Tell me a joke about {w}, a good one", "No.")], f"d{i}"))
        store.add_feedback(store.key_for(sharing), f"d{i}-0", -1, None)
    cfg = load_config(learn_config(tmp_path, tiny_models["qwen2"], folder, learn={
        "blocklist": str(tmp_path / "block.txt"), "reservoir_ratio": 100.0, "per_key_cap": 1000,
        "gate": {"require_heldout": False}},
        train={"max_steps": 4}, eval={"original": None}))
    learner = Learner(cfg, store=store)
    first = learner.round()
    assert first.status == "promoted", first.gate.reasons
    from convlearn.data.splits import is_heldout
    dropped = {c for c in dropped if not is_heldout(c, cfg.learn.gate_fraction)}  # (ids are random: the slice too)
    assert first.intake.dropped["downvoted"] + first.intake.dropped["moderation"] == len(dropped) > 0
    trained = set(RoundPlan.load(folder / "rounds" / "r0001" / "plan.json").trained)
    assert trained and not trained & dropped
    late = store.add_key("late", consent_default=True)
    for i, conv in enumerate(chats(6, skip=80)):
        talk(store, late, conv, f"late{i}")
    second = learner.round()
    plan = RoundPlan.load(folder / "rounds" / "r0002" / "plan.json")
    assert second.reservoir > 0 and plan.train_rows > 0
    replayed = set(plan.trained[plan.train_rows:])
    assert len(replayed) == second.reservoir and replayed <= trained and not replayed & dropped
    lines = (folder / "rounds" / "r0002" / "data" / "train.jsonl").read_text().splitlines()
    assert not dropped & {json.loads(x)["id"] for x in lines}


# -- rounds ---------------------------------------------------------------------------------------------------
def test_a_round_is_gated_promoted_and_listed_then_rolled_back(tmp_path, tiny_models, filled):
    from convlearn.learn.learner import CURSOR, Learner
    folder, _ = filled
    cfg = load_config(learn_config(tmp_path, tiny_models["qwen2"], folder))
    learner = Learner(cfg)
    assert learner.store.pending_consented(0)[0] == 60 and learner.due()  # K = learn.round_conversations = 20
    lazy = Learner(dataclasses.replace(cfg, learn=dataclasses.replace(cfg.learn, round_conversations=100)),
                   store=learner.store)
    assert not lazy.due() and lazy.due(now=time.time() + 31 * 60)  # T = learn.round_minutes = 30
    record = learner.round()
    assert record.status == "promoted", record.gate.reasons
    intake = record.intake
    assert intake.read == 60 and intake.heldout_for_gate > 0
    assert intake.kept + intake.heldout_for_gate + sum(intake.dropped.values()) == 60  # each one counted
    checks = record.gate.checks
    assert {k: c.status.value for k, c in checks.items()} == {
        "training": "pass", "learning": "pass", "original_text": "pass", "retention": "not measured",
        "probes": "not measured"}
    assert checks["learning"].value < 0 and checks["learning"].low <= checks["learning"].value <= \
        checks["learning"].high
    store = learner.store
    v1 = store.version("v1")
    assert v1.status == "promoted" and v1.parent == "v0" and v1.seq_from == 0
    assert v1.seq_to == store.last_message_id() == int(store.pointer(CURSOR))
    assert v1.conversations == intake.kept
    assert store.current_id() == "v1" and (Path(v1.path) / "config.json").is_file()
    assert learner.round() is None  # nothing new: no round, nothing read twice

    listed = cli_here("versions", folder)
    assert listed.returncode == 0 and "*v1" in listed.stdout and " v0" in listed.stdout
    rb = cli_here("rollback", folder, "v0")
    assert rb.returncode == 0 and store.current_id() == "v0"
    assert cli_here("rollback", folder, "v9").returncode == 2

    # the next round starts from the version that is current now (v0 after the rollback)
    talk(store, store.add_key("late", consent_default=True), chats(1, skip=80)[0], "late")
    second = learner.round()
    assert second.parent == "v0" and second.reservoir == 0  # v0's lineage learned nothing to replay


def test_a_damaging_round_is_rejected_and_kept_for_inspection(tmp_path, tiny_models, filled):
    from convlearn.learn.learner import CURSOR, Learner
    folder, _ = filled
    cfg = load_config(learn_config(tmp_path, tiny_models["qwen2"], folder, learn={"epochs": 8.0},
                                   method={"name": "adamw", "layerwise": False}, train={"lr": 0.3}))
    learner = Learner(cfg)
    record = learner.round()
    assert record.status == "rejected"
    reasons = " ".join(record.gate.reasons)
    assert "original_text: original-distribution perplexity vs v0, relative change +" in reasons
    assert record.gate.checks["original_text"].low > 1.0  # more than doubled, the interval says so too
    store = learner.store
    assert store.current_id() == "v0" and store.version("v1").status == "rejected"
    assert (folder / "rounds" / "r0001" / "candidate" / "config.json").is_file()  # kept for inspection
    assert not (folder / "versions" / "v1").exists()
    assert int(store.pointer(CURSOR)) == store.last_message_id()  # read once, even when rejected
    with pytest.raises(Exception, match="rejected by the gate"):
        store.set_current("v1")


def test_a_round_whose_loss_goes_non_finite_is_rejected(tmp_path, tiny_models, filled):
    """The served version's weights hold a NaN (a broken upload, a bad merge): every step of the round's loss is
    non-finite, so the round is rejected for its training and nothing is promoted."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from convlearn.learn.learner import Learner
    folder, _ = filled
    broken = tmp_path / "broken"
    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"], dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_models["qwen2"]).save_pretrained(broken)
    cfg = load_config(learn_config(tmp_path, broken, folder))
    learner = Learner(cfg)
    record = learner.round()
    assert record.status == "rejected" and record.gate.reasons[0].startswith("training:")
    assert "non-finite" in record.gate.reasons[0]
    assert learner.store.current_id() == "v0" and not (folder / "versions" / "v1").exists()


# -- canaries -------------------------------------------------------------------------------------------------
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
