"""The online learner: intake from the store (consent, exactly once, drops with reasons, scrubbing), rounds
promoted or rejected. The gate's checks: test_gate.py; canaries: test_canary.py; kills, hot swap and the live
demo: test_learn_faults.py."""
from __future__ import annotations

import dataclasses
import json
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
    assert not (folder / "rounds" / "r0002" / "data").exists()  # pruned once the round committed


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
