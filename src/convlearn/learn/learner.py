"""`convlearn learn`: rounds of training on the store's new consented conversations, each candidate gated, the
promoted ones made current in the store (the server follows), rejected ones kept with their reasons.

A round, in the order that makes a kill -9 anywhere safe:
1. plan: read the conversations in (cursor, last message] through intake.py; write the round's data and
   `plan.json` (atomically). A restart finds the plan for the same cursor and uses it as it is.
2. train: the ordinary training run (train/build.py) from the current version, with checkpoints; a restart
   resumes from the newest intact one (`--resume` semantics), so no step runs twice.
3. export the candidate (a self-contained model folder) and gate it (gate.py); the decision is saved.
4. commit: a promoted candidate's folder is renamed into versions/ (one atomic rename), then ONE store
   transaction writes its version row, the cursor and the current-version pointer. Until that commit the
   server keeps serving the old version and the conversations stay unread; after it, they are read.
5. prune (the retention rule): the round's data files, prepared-data cache, checkpoints and gate work are
   deleted; its JSON records keep ids and figures only. Rejected candidates: learn.keep_rejected.

Forgetting: before training starts (a resume included) and again in the promoting transaction, the round asks
the store which of its conversations were deleted or withdrawn since it was planned. They are dropped from its
files; if training had read them, it starts again without them (at most learn.forget_retrains times, then the
round is rejected). The gate's held-out slice follows the same rule.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

from ..config import RunConfig, SourceConfig, dump_config
from ..errors import UserError
from ..eval.evaluations import check_suites
from ..models import load_tokenizer, model_spec
from ..store import Forgotten, RoundDir, ServeDir, Store, Version
from ..store.versions import BASE_VERSION, ensure_base
from ..train.checkpoint import checkpoints_dir, complete_checkpoints
from .intake import heldout_records, read_round, reservoir_records
from .records import Check, GateDecision, RoundPlan, RoundRecord, Status, TrainingOutcome

log = logging.getLogger("convlearn.learn")

CURSOR, ROUND, GATE_FRACTION = "learn_cursor", "learn_round", "learn_gate_fraction"
# What `convlearn learn` trains with where the config file does not say: layer-wise GaLore (full gradients never
# all alive: a single small machine) and experiment 3's online setting (batch 2, arrival order).
LEARN_DEFAULTS = {("method", "layerwise"): "true", ("train", "batch_size"): "2", ("train", "order"): "stream"}


def learn_config(path: str | None, sets: list[str]):
    """The run config of `convlearn learn`: LEARN_DEFAULTS under the file's own keys and the --set overrides."""
    import yaml

    from ..config import load_config
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) if path else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raw = {}  # load_config below says what is wrong with the file, in one line

    def given(section: str, key: str) -> bool:
        return isinstance(raw, dict) and isinstance(raw.get(section), dict) and key in raw[section]
    defaults = [f"{section}.{key}={value}" for (section, key), value in LEARN_DEFAULTS.items()
                if not given(section, key)]
    cfg = load_config(path, defaults + list(sets), require=("model.name",))
    check_suites(cfg.eval)  # the gate's evaluator would find an unknown evaluation only after a round's training
    return cfg


def _drop_records(path: Path, ids: set[str]) -> list[dict]:
    """Rewrite a round's records file without the conversations `ids`; the records kept."""
    if not path.is_file():
        return []
    kept = [r for r in (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line)
            if r["id"] not in ids]
    _write_records(path, kept)
    return kept


def _write_records(path: Path, records: list) -> None:
    """A round's records (Conversation records, or their dicts) in convlearn's native format (data/sources.py
    `convlearn`), trained on as they are; written whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r if isinstance(r, dict) else r.to_dict(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


class Learner:
    def __init__(self, cfg: RunConfig, store: Store | None = None):
        self.learn = cfg.learn
        self.dir = ServeDir(Path(self.learn.dir))
        # rounds and the gate share one data cache, in the serve directory
        self.cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_dir=str(self.dir.cache)))
        self.store = store or Store(self.learn.store or self.dir.store_url)
        ensure_base(self.store, cfg.model.name)
        self._check_gate_fraction()

    def _check_gate_fraction(self) -> None:
        """The held-out slice is a hash of each conversation id under `gate_fraction`: another fraction would move
        conversations already trained on into the slice the gate measures learning on (or the reverse). The
        first learner to use a store records it; a different one later is refused."""
        recorded = self.store.pointer(GATE_FRACTION)
        if recorded is None:
            self.store.set_pointers({GATE_FRACTION: repr(self.learn.gate_fraction)})
        elif float(recorded) != self.learn.gate_fraction:
            raise UserError(f"learn.gate_fraction: this store's rounds hold out {float(recorded):g} of the "
                            f"conversations, not {self.learn.gate_fraction:g}; changing it would put conversations "
                            f"already trained on into the gate's held-out slice. Set it back to "
                            f"{float(recorded):g}, or start a new store")

    # -- when -------------------------------------------------------------------------------------------
    def cursor(self) -> int:
        return int(self.store.pointer(CURSOR, "0"))

    def due(self, now: float | None = None) -> bool:
        n, oldest = self.store.pending_consented(self.cursor())
        if n >= self.learn.round_conversations:
            return True
        waited = (now or time.time()) - oldest if oldest is not None else 0
        return n >= self.learn.min_round_conversations and waited >= 60 * self.learn.round_minutes

    def unmeasured(self) -> list[str]:
        """The gate checks this config leaves off (said once at start, recorded in every round)."""
        e = self.cfg.eval
        out = []
        if e.original is None:
            out.append("original text (eval.original is null)")
        if not any(b.name == e.criteria.retention_benchmark for b in e.benchmarks):
            out.append(f"retention ({e.criteria.retention_benchmark} is not in eval.benchmarks)")
        if not e.probes:
            out.append("knowledge probes (eval.probes is null)")
        return out

    def run(self, rounds: int | None = None, once: bool = False, stop=None) -> list[RoundRecord]:
        """Rounds when due (every poll), until `rounds` ran or `stop()`; `once`: one round now if anything
        waits, then return."""
        off = self.unmeasured()
        if off:
            log.warning("the gate will not measure: %s", "; ".join(off))
        done: list[RoundRecord] = []
        while True:
            if once or self.due() or self._unfinished():
                record = self.round()
                if record is not None:
                    done.append(record)
                if once or (rounds is not None and len(done) >= rounds):
                    return done
            if stop is not None and stop():
                return done
            time.sleep(self.learn.poll_seconds)

    def _unfinished(self) -> bool:
        return self._round_dir(self._next_round()).plan.is_file()

    def _next_round(self) -> int:
        return int(self.store.pointer(ROUND, "0")) + 1

    def _round_dir(self, n: int) -> RoundDir:
        return self.dir.round(n)

    # -- one round --------------------------------------------------------------------------------------
    def round(self) -> RoundRecord | None:
        n, cursor = self._next_round(), self.cursor()
        rdir = self._round_dir(n)
        plan = self._plan(n, cursor, rdir)
        if plan is None:
            return None
        started = time.time()
        self.prune_rejected()
        plan = self._forget(plan, rdir)  # at training start, a resume included
        record = RoundRecord(n, plan.version, plan.parent, plan.intake, plan.reservoir, plan.heldout)
        if not plan.train_rows:
            i = plan.intake
            log.info("round %d: nothing to train on (%d read, dropped %s, %d held out for the gate, %d deleted or "
                     "withdrawn since planned)", n, i.read, i.dropped, i.heldout_for_gate, len(plan.forgotten))
            self.store.set_pointers({CURSOR: str(plan.upto), ROUND: str(n)})
            record.save(rdir.record)
            self._prune(rdir, promoted=False)
            return record
        record.training = self._train(plan, rdir)
        retrains = plan.retrains
        plan = self._forget(plan, rdir)  # the gate's slice too, at the gate's start
        if plan.retrains != retrains:
            return self.round()  # training had read one: again, from the saved plan without it
        t_gate = time.time()
        record.gate = self._gate(plan, rdir, record.training)
        record.seconds = {"train": record.training.seconds, "gate": round(time.time() - t_gate, 1)}
        try:
            record.gate = self._commit(plan, rdir, record.gate, last_try=plan.retrains >= self.learn.forget_retrains)
        except Forgotten as e:  # deleted or withdrawn while the gate ran: drop them, train again
            log.info("round %d: %s since it was planned; training again without them", n, e)
            self._forget(plan, rdir)
            return self.round()  # the saved plan, without them (an emptied one commits as empty)
        record.seconds["round"] = round(time.time() - started, 1)
        record.seconds["since_oldest_conversation"] = round(time.time() - plan.oldest, 1) if plan.oldest else None
        record.status = "promoted" if record.gate.promote else "rejected"
        record.save(rdir.record)
        self._prune(rdir, promoted=record.gate.promote)
        log.info("round %d: %s %s%s", n, record.status, record.version,
                 "" if record.gate.promote else f" ({'; '.join(record.gate.reasons)})")
        return record

    def _plan(self, n: int, cursor: int, rdir: RoundDir) -> RoundPlan | None:
        if rdir.plan.is_file():
            plan = RoundPlan.load(rdir.plan)
            if plan.after == cursor:
                return plan  # a restart: the same conversations, the same data files
            shutil.rmtree(rdir.root)  # a plan for a cursor already committed (cannot happen unless edited): redo
        upto = self.store.last_message_id()
        if upto <= cursor:
            return None
        current = self.store.current_version()
        seed = self.cfg.seed + n
        intake = read_round(self.store, self.cfg, cursor, upto, seed)
        pending = self.store.consented_messages(cursor, upto)
        reservoir = reservoir_records(self.store, self.cfg, self._lineage_trained(current),
                                      round(self.learn.reservoir_ratio * len(intake.records)), seed,
                                      intake.records) if intake.records else []
        heldout = heldout_records(self.store, self.cfg, upto)
        rdir.data.mkdir(parents=True, exist_ok=True)
        _write_records(rdir.train_records, intake.records + reservoir)
        _write_records(rdir.heldout_records, heldout)
        plan = RoundPlan(n, cursor, upto, current.id, current.path, seed, intake.counts(), len(intake.records),
                         len(reservoir), len(heldout), min((c["created"] for c in pending), default=None),
                         trained=[r.id for r in intake.records + reservoir], heldout_ids=[r.id for r in heldout])
        plan.save(rdir.plan)
        return plan

    def _lineage_trained(self, current: Version) -> list[str]:
        """The conversations the current version's lineage was trained on, in the order they were (each once),
        from the plans of its promoted rounds."""
        out: dict[str, None] = {}
        for v in reversed(self.store.lineage(current.id)):
            plan = self.dir.round(v.round).plan if v.status == "promoted" and v.round else None
            if plan is not None and plan.is_file():
                out.update(dict.fromkeys(RoundPlan.load(plan).trained))
        return list(out)

    def _forget(self, plan: RoundPlan, rdir: RoundDir) -> RoundPlan:
        """The round without the conversations deleted or withdrawn since it was planned: its files rewritten
        without them; training (checkpoints, candidate) started again if it had begun on one (`retrains`
        counts those restarts), the gate's work if its slice held one."""
        gone = self.store.unavailable(plan.trained + plan.heldout_ids)
        if not gone:
            return plan
        kept = _drop_records(rdir.train_records, gone)
        held = _drop_records(rdir.heldout_records, gone)
        trained_gone = gone & set(plan.trained)
        retrains = plan.retrains
        if trained_gone:
            retrains += int(rdir.run.exists() or rdir.training.exists())  # training had begun: it read them
            for folder in (rdir.run, rdir.candidate, rdir.cache):
                shutil.rmtree(folder, ignore_errors=True)
            rdir.training.unlink(missing_ok=True)
        shutil.rmtree(rdir.gate_work, ignore_errors=True)
        rdir.gate.unlink(missing_ok=True)
        reservoir = sum(1 for r in kept if (r.get("meta") or {}).get("reservoir"))
        plan = dataclasses.replace(
            plan, trained=[i for i in plan.trained if i not in gone],
            heldout_ids=[i for i in plan.heldout_ids if i not in gone], train_rows=len(kept) - reservoir,
            reservoir=reservoir, heldout=len(held), forgotten=sorted(set(plan.forgotten) | gone), retrains=retrains)
        plan.save(rdir.plan)
        log.info("round %d: %d conversation(s) deleted or withdrawn since planned, dropped (%d trained on)",
                 plan.round, len(gone), len(trained_gone))
        return plan

    def _prune(self, rdir: RoundDir, promoted: bool) -> None:
        """The retention rule, once the round has committed: its conversations' text and token ids go (data
        files, prepared-data cache, gate work, checkpoints); its JSON records keep ids and figures only. A
        promoted candidate has moved into versions/; a rejected one waits for prune_rejected."""
        for folder in (rdir.data, rdir.cache, rdir.gate_work, checkpoints_dir(rdir.run)):
            shutil.rmtree(folder, ignore_errors=True)
        for leftover in rdir.run.glob("*.tmp") if rdir.run.is_dir() else ():
            leftover.unlink(missing_ok=True)
        if promoted:
            shutil.rmtree(rdir.candidate, ignore_errors=True)

    def prune_rejected(self) -> list[str]:
        """Rejected candidates' folders beyond the newest learn.keep_rejected, and any trained on a conversation
        deleted or withdrawn since: deleted (their version rows and gate decisions stay). The ids pruned."""
        rejected = [v for v in self.store.versions() if v.status == "rejected" and v.round]
        pruned = []
        for i, v in enumerate(sorted(rejected, key=lambda v: v.round, reverse=True)):
            rdir = self._round_dir(v.round)
            if not rdir.candidate.is_dir():
                continue
            plan = RoundPlan.load(rdir.plan) if rdir.plan.is_file() else None
            if i >= self.learn.keep_rejected or plan is None or self.store.unavailable(plan.trained):
                shutil.rmtree(rdir.candidate)
                pruned.append(v.id)
        return pruned

    def _round_config(self, plan: RoundPlan, rdir: RoundDir):
        cfg, t = self.cfg, self.cfg.train
        rows = plan.train_rows + plan.reservoir
        steps = max(1, min(t.max_steps, math.ceil(self.learn.epochs * rows / (t.batch_size * t.grad_accum))))
        data = dataclasses.replace(cfg.data, sources=[SourceConfig(path=str(rdir.train_records), format="convlearn")],
                                   heldout_fraction=0.0, max_conversations=None, cache_dir=str(rdir.cache))
        return dataclasses.replace(
            cfg, data=data, model=dataclasses.replace(cfg.model, name=plan.parent_path, revision=None),
            train=dataclasses.replace(t, max_steps=steps, warmup_steps=min(t.warmup_steps, steps // 2)),
            eval=dataclasses.replace(cfg.eval, schedule=[], final_suite=None, every=0),
            logging=dataclasses.replace(cfg.logging, progress=False), output_dir=str(rdir.run))

    def _train(self, plan: RoundPlan, rdir: RoundDir) -> TrainingOutcome:
        """The round's training: `convlearn train` on the round's config (resumed from the newest intact
        checkpoint after a kill), then its candidate exported as a self-contained model folder."""
        from ..experiments.export import export
        from ..experiments.run import run_training
        from ..train.loop import RunStopped
        if rdir.training.is_file():
            return TrainingOutcome.load(rdir.training)
        cfg = self._round_config(plan, rdir)
        resume = bool(complete_checkpoints(rdir.run))
        if rdir.run.exists() and not resume:
            shutil.rmtree(rdir.run)  # killed before its first checkpoint: start the round's training again
        started = time.time()
        out = TrainingOutcome(steps_planned=cfg.train.max_steps, resumed=resume)
        try:
            summary = run_training(cfg, rdir.run, resume=resume)
            out = dataclasses.replace(out, steps=summary.steps, final_loss=summary.final_loss, tokens=summary.tokens,
                                      skipped_steps=summary.skipped_steps, tokens_per_s=summary.tokens_per_s,
                                      precision=summary.precision, method=summary.method_label)
            if summary.skipped_steps:
                out.non_finite = f"{summary.skipped_steps} steps with a non-finite loss or gradient"
        except RunStopped as e:
            out.non_finite = str(e)
        if not out.failed:
            shutil.rmtree(rdir.candidate, ignore_errors=True)
            export(rdir.run, rdir.candidate, merge=True)
            out.candidate = str(rdir.candidate)
        out.seconds = round(time.time() - started, 1)
        out.save(rdir.training)
        return out

    def _gate(self, plan: RoundPlan, rdir: RoundDir, training: TrainingOutcome) -> GateDecision:
        from .gate import Gate
        if rdir.gate.is_file():
            return GateDecision.load(rdir.gate)
        if training.failed:
            decision = GateDecision.of({"training": training.check()})
        else:
            tokenizer = load_tokenizer(plan.parent_path)
            spec = model_spec(self.cfg.model.name, self.cfg.model.revision)
            # the slice's token ids in the round's own cache (pruned with it), not the serve directory's
            cfg = dataclasses.replace(self.cfg, data=dataclasses.replace(self.cfg.data, cache_dir=str(rdir.cache)))
            gate = Gate(cfg, tokenizer, spec, rdir.heldout_records if plan.heldout else None, rdir.gate_work,
                        self.dir.gate_cache)
            current = self.store.version(plan.parent)
            base = self.store.version(BASE_VERSION)
            decision = gate.judge(current, training.candidate, plan.version, training, base=base)
        decision.unmeasured = self.unmeasured()
        decision.save(rdir.gate)
        return decision

    def _commit(self, plan: RoundPlan, rdir: RoundDir, decision: GateDecision, last_try: bool = True
                ) -> GateDecision:
        """Record the decision (the one returned). Raises Forgotten (before any file moves, or with the move
        undone) when a promoted candidate was trained on a conversation deleted or withdrawn meanwhile, unless
        `last_try`: then it is rejected."""
        vid = plan.version
        if self.store.version(vid) is not None:
            return GateDecision.load(rdir.gate) if rdir.gate.is_file() else decision  # committed before a kill
        final = self.dir.version(vid)
        gone = self.store.unavailable(plan.trained) if decision.promote else set()
        if gone and last_try:
            decision = GateDecision.of({**decision.checks, "forgotten": Check(
                Status.FAIL, detail=f"{len(gone)} conversation(s) deleted or withdrawn after training, "
                                    f"{self.learn.forget_retrains} re-trainings already", blocking=True)},
                decision.figures)
            decision.save(rdir.gate)
        elif gone:
            raise Forgotten(gone)
        if decision.promote:
            final.parent.mkdir(parents=True, exist_ok=True)
            if rdir.candidate.is_dir():
                if final.exists():  # a folder left by a kill before the commit: not served, replace it
                    shutil.rmtree(final)
                os.replace(rdir.candidate, final)
            elif not final.is_dir():
                raise UserError(f"round {plan.round}: the candidate folder is gone and {final} does not exist")
        version = Version(vid, "promoted" if decision.promote else "rejected",
                          str(final if decision.promote else rdir.candidate), parent=plan.parent,
                          seq_from=plan.after, seq_to=plan.upto, conversations=plan.train_rows, round=plan.round,
                          gate={**decision.to_json(), "intake": plan.intake.to_json()})
        try:
            self.store.record_version(version, {CURSOR: str(plan.upto), ROUND: str(plan.round)},
                                      make_current=decision.promote, trained=plan.trained)
        except Forgotten:  # deleted between the check above and the commit: never served, out of versions/
            if decision.promote and final.is_dir():
                os.replace(final, rdir.candidate)
            raise
        return decision


def learn(cfg: RunConfig, once: bool = False, rounds: int | None = None) -> int:
    learner = Learner(cfg)
    learner.dir.root.mkdir(parents=True, exist_ok=True, mode=0o700)  # with a database store nothing made it yet
    learner.dir.learn_config.write_text(dump_config(cfg))
    done = learner.run(rounds=rounds, once=once)
    for r in done:  # the command's output: one JSON line per round
        print(json.dumps({"round": r.round, "status": r.status, "version": r.version, "seconds": r.seconds}))
    return 0
