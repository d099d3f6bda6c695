"""Forgetting means forgotten: a conversation deleted or withdrawn before a round trains is never trained on, one
deleted before promotion is never in a promoted version, and after a deletion no file under the serve directory
holds its text or its token ids."""
import json
from pathlib import Path

import numpy as np

from convlearn.config import load_config
from convlearn.data.splits import is_heldout
from convlearn.learn.learner import Learner
from convlearn.learn.records import RoundPlan
from convlearn.models import load_tokenizer
from convlearn.store import Store, default_url
from helpers import cli_here
from learnstore import learn_config, talk

FAST = {"train": {"max_steps": 4}, "eval": {"original": None}, "learn": {"gate": {"require_heldout": False}}}


def _cfg(tmp_path, tiny_models, folder, **over):
    sections = {k: dict(v) for k, v in FAST.items()}
    for k, v in over.items():
        sections[k] = {**sections.get(k, {}), **v}
    return load_config(learn_config(tmp_path, tiny_models["qwen2"], folder, **sections))


def _ids_read_by_training(monkeypatch) -> list[set[str]]:
    """The conversation ids in the round's training file each time training starts (what it trains on)."""
    seen: list[set[str]] = []
    original = Learner._train

    def spy(self, plan, rdir):
        if not rdir.training.is_file():
            lines = rdir.train_records.read_text(encoding="utf-8").splitlines()
            seen.append({json.loads(x)["id"] for x in lines if x})
        return original(self, plan, rdir)
    monkeypatch.setattr(Learner, "_train", spy)
    return seen


def _trained_ids(folder: Path, round_: int = 1) -> list[str]:
    return RoundPlan.load(folder / "rounds" / f"r{round_:04d}" / "plan.json").trained


def test_deleted_or_withdrawn_before_training_is_never_trained_on(tmp_path, tiny_models, filled, monkeypatch):
    """The round is planned, then (as after a kill between plan and training) two conversations are deleted and
    one withdrawn: training starts without them, nothing is re-trained, and the plan says which were dropped."""
    folder, keys = filled
    cfg = _cfg(tmp_path, tiny_models, folder)
    learner = Learner(cfg)
    rdir = learner.dir.round(1)
    plan = learner._plan(1, 0, rdir)
    key = learner.store.key_for(keys["sharing"])
    deleted, withdrawn = plan.trained[:2], plan.trained[2]
    for cid in deleted:
        assert learner.store.delete_conversation(cid, key)
    assert learner.store.set_consent(withdrawn, key, False)
    seen = _ids_read_by_training(monkeypatch)
    record = Learner(cfg).round()  # a fresh learner, as after the kill
    gone = {*deleted, withdrawn}
    assert record.status == "promoted", record.gate.reasons
    assert len(seen) == 1 and seen[0] and not seen[0] & gone
    after = RoundPlan.load(rdir.plan)
    assert set(after.forgotten) == gone and after.retrains == 0 and not set(after.trained) & gone
    assert after.train_rows == plan.train_rows - 3
    # the operator's question after a deletion: which versions hold a conversation
    held = cli_here("versions", folder, "--trained-on", after.trained[0])
    assert held.returncode == 0 and held.stdout.split("\n")[1].split() == ["v1", "promoted", "trained", "on", "it"]
    never = cli_here("versions", folder, "--trained-on", deleted[0])
    assert never.returncode == 0 and never.stdout.strip() == f"no version was trained on {deleted[0]}"


def test_deleted_while_the_round_ran_is_never_in_a_promoted_version(tmp_path, tiny_models, filled, monkeypatch):
    """A conversation the round trained on is deleted while the gate judges the candidate: that candidate is
    never promoted; the round drops it and trains again, and the promoted version's training never read it."""
    folder, keys = filled
    cfg = _cfg(tmp_path, tiny_models, folder)
    learner = Learner(cfg)
    seen = _ids_read_by_training(monkeypatch)
    original_gate, victims = Learner._gate, []

    def gate_then_delete(self, plan, rdir, training):
        decision = original_gate(self, plan, rdir, training)
        if not victims:  # once: the first candidate's gate
            victims.append(plan.trained[0])
            assert self.store.delete_conversation(victims[0], self.store.key_for(keys["sharing"]))
        return decision
    monkeypatch.setattr(Learner, "_gate", gate_then_delete)
    record = learner.round()
    assert record.status == "promoted", record.gate.reasons
    assert len(seen) == 2 and victims[0] in seen[0] and victims[0] not in seen[1]  # trained again without it
    plan = RoundPlan.load(learner.dir.round(1).plan)
    assert plan.forgotten == victims and plan.retrains == 1 and victims[0] not in plan.trained
    assert learner.store.version("v1").status == "promoted" and learner.store.current_id() == "v1"


def test_deleted_each_time_the_round_is_rejected_after_its_retrains(tmp_path, tiny_models, filled, monkeypatch):
    """The negative case: a deletion before every promotion. After learn.forget_retrains trainings again the
    round is rejected with that reason; nothing trained on a deleted conversation is ever current."""
    folder, keys = filled
    cfg = _cfg(tmp_path, tiny_models, folder, learn={"forget_retrains": 1})
    learner = Learner(cfg)
    original_gate, victims = Learner._gate, []

    def gate_then_delete(self, plan, rdir, training):
        decision = original_gate(self, plan, rdir, training)
        victims.append(plan.trained[0])
        assert self.store.delete_conversation(victims[-1], self.store.key_for(keys["sharing"]))
        return decision
    monkeypatch.setattr(Learner, "_gate", gate_then_delete)
    record = learner.round()
    assert len(victims) == 2 and record.status == "rejected"
    assert record.gate.reasons == ["forgotten: 1 conversation(s) deleted or withdrawn after training, 1 "
                                   "re-trainings already"]
    assert learner.store.current_id() == "v0" and learner.store.version("v1").status == "rejected"
    assert not (folder / "versions" / "v1").exists()
    assert learner.prune_rejected() == ["v1"]  # trained on a deleted conversation: its folder goes
    assert not (folder / "rounds" / "r0001" / "candidate").exists()


def _holders(root: Path, needles: list[bytes]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in root.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            hits = [n.decode("latin-1")[:20] for n in needles if n in data]
            if hits:
                out[str(f.relative_to(root))] = hits
    return out


def test_after_delete_no_file_holds_the_text_or_its_token_ids(tmp_path, tiny_models, filled, monkeypatch):
    """A consented conversation is trained on in a round; once the round commits and the user deletes it, no
    file under the serve directory holds its text or its token ids (store with secure_delete and its WAL
    checkpointed, round files and caches pruned). The positive control: the same search finds both while the
    round runs, and the text in the store before the delete."""
    folder, keys = filled
    store = Store(default_url(folder))
    key = store.key_for(keys["sharing"])
    reply = "Noted: your locker code is 7319 on the barge Quillon Vasquetti, beside the blue crane."
    cid = None
    for i in range(20):  # the gate holds out a hash of the id: take one the round trains on
        cid = talk(store, keys["sharing"], [(f"Remember this for me, please (note {i}).", reply)], f"secret{i}")
        if not is_heldout(cid, 0.2):
            break
        assert store.delete_conversation(cid, key)
    tok = load_tokenizer(str(tiny_models["qwen2"]))
    ids = tok.encode(reply, add_special_tokens=False)[1:-1]  # the interior: the same tokens in any context
    assert len(ids) >= 10
    needles = [reply.encode(), np.asarray(ids, dtype=np.int32).tobytes()]
    # per_key_cap: the sharing key already has about 50 conversations in the fixture; this one must not be capped
    cfg = _cfg(tmp_path, tiny_models, folder, learn={"per_key_cap": 1000})
    during: list[dict] = []
    original_gate = Learner._gate

    def gate_and_look(self, plan, rdir, training):
        during.append(_holders(folder, needles))
        return original_gate(self, plan, rdir, training)
    monkeypatch.setattr(Learner, "_gate", gate_and_look)
    learner = Learner(cfg, store=store)
    record = learner.round()
    assert record.status == "promoted" and cid in _trained_ids(folder)
    found = {hit for hits in during[0].values() for hit in hits}
    assert len(found) == 2, during  # the text (round data) and the token ids (the round's cache) while it ran
    assert any(p.startswith("rounds/r0001/cache") for p in during[0])
    before = _holders(folder, needles[:1])
    assert any(p.startswith("store.sqlite") for p in before)  # the store holds it before the delete
    assert store.delete_conversation(cid, key)
    assert _holders(folder, needles) == {}
    assert store.conversation(cid) is None and store.counts()["conversations"] == 70
