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
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from ..config import SourceConfig, dump_config
from ..errors import UserError
from ..eval.evaluations import check_suites
from ..store import Store, default_url
from ..store.versions import BASE_VERSION, ensure_base
from ..train import precision as precision_mod
from ..train.checkpoint import complete_checkpoints
from ..models import load_tokenizer, model_spec, resolve_device
from .intake import heldout_rows, read_round, reservoir_rows

CURSOR, ROUND = "learn_cursor", "learn_round"
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


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


class Learner:
    def __init__(self, cfg, store: Store | None = None, log=print):
        self.learn = cfg.learn
        self.dir = Path(self.learn.dir).resolve()
        # rounds and the gate share one data cache, in the serve directory
        self.cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_dir=str(self.dir / "cache")))
        self.store = store or Store(self.learn.store or default_url(self.dir))
        self.log = log
        ensure_base(self.store, cfg.model.name)
        # a hook for fault tests: called with the round's trainer before it runs
        self.on_trainer = None

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

    def run(self, rounds: int | None = None, once: bool = False, stop=None) -> list[dict]:
        """Rounds when due (every poll), until `rounds` ran or `stop()`; `once`: one round now if anything
        waits, then return."""
        off = self.unmeasured()
        if off:
            self.log(f"convlearn learn: the gate will not measure: {'; '.join(off)}")
        done: list[dict] = []
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
        return (self._round_dir(self._next_round()) / "plan.json").is_file()

    def _next_round(self) -> int:
        return int(self.store.pointer(ROUND, "0")) + 1

    def _round_dir(self, n: int) -> Path:
        return self.dir / "rounds" / f"r{n:04d}"

    # -- one round --------------------------------------------------------------------------------------
    def round(self) -> dict | None:
        n, cursor = self._next_round(), self.cursor()
        rdir = self._round_dir(n)
        plan = self._plan(n, cursor, rdir)
        if plan is None:
            return None
        started = time.time()
        record = {"round": n, "version": f"v{n}", "parent": plan["parent"], "intake": plan["intake"],
                  "reservoir": plan["reservoir"], "heldout_for_gate": plan["heldout"]}
        if not plan["train_rows"]:
            self.log(f"round {n}: nothing to train on ({plan['intake']['read']} read, dropped "
                     f"{plan['intake']['dropped']}, {plan['intake']['heldout_for_gate']} held out for the gate)")
            self.store.set_pointers({CURSOR: str(plan["upto"]), ROUND: str(n)})
            record["status"] = "empty"
            _write_json(rdir / "round.json", record)
            return record
        training = self._train(plan, rdir)
        record["training"] = training
        t_gate = time.time()
        decision = self._gate(plan, rdir, training)
        record["gate"] = decision
        record["seconds"] = {"train": training.get("seconds"), "gate": round(time.time() - t_gate, 1)}
        self._commit(n, plan, rdir, decision, record)
        record["seconds"]["round"] = round(time.time() - started, 1)
        record["seconds"]["since_oldest_conversation"] = round(time.time() - plan["oldest"], 1) \
            if plan.get("oldest") else None
        record["status"] = "promoted" if decision["promote"] else "rejected"
        _write_json(rdir / "round.json", record)
        self.log(f"round {n}: {record['status']} v{n}" + ("" if decision["promote"] else
                                                           f" ({'; '.join(decision['reasons'])})"))
        return record

    def _plan(self, n: int, cursor: int, rdir: Path) -> dict | None:
        path = rdir / "plan.json"
        if path.is_file():
            plan = json.loads(path.read_text())
            if plan["after"] == cursor:
                return plan  # a restart: the same conversations, the same data files
            shutil.rmtree(rdir)  # a plan for a cursor already committed (cannot happen unless edited): redo
        upto = self.store.last_message_id()
        if upto <= cursor:
            return None
        current = self.store.current_version()
        seed = self.cfg.seed + n
        intake = read_round(self.store, self.cfg, cursor, upto, seed)
        pending = self.store.consented_messages(cursor, upto)
        ranges = [(v["seq_from"], v["seq_to"]) for v in self.store.lineage(current["id"])
                  if v["status"] == "promoted" and v["seq_to"] is not None]
        reservoir = reservoir_rows(self.store, self.cfg, ranges, round(self.learn.reservoir_ratio * len(intake.rows)),
                                   seed) if intake.rows else []
        heldout = heldout_rows(self.store, self.cfg, upto)
        rdir.mkdir(parents=True, exist_ok=True)
        (rdir / "data").mkdir(exist_ok=True)
        _write_jsonl(rdir / "data" / "train.jsonl", intake.rows + reservoir)
        _write_jsonl(rdir / "data" / "heldout.jsonl", heldout)
        plan = {"round": n, "after": cursor, "upto": upto, "parent": current["id"], "parent_path": current["path"],
                "seed": seed, "intake": intake.record(), "train_rows": len(intake.rows), "reservoir": len(reservoir),
                "heldout": len(heldout), "oldest": min((c["created"] for c in pending), default=None)}
        _write_json(path, plan)
        return plan

    def _round_config(self, plan: dict, rdir: Path):
        cfg, t = self.cfg, self.cfg.train
        rows = plan["train_rows"] + plan["reservoir"]
        steps = max(1, min(t.max_steps, math.ceil(self.learn.epochs * rows / (t.batch_size * t.grad_accum))))
        data = dataclasses.replace(cfg.data, sources=[SourceConfig(path=str(rdir / "data" / "train.jsonl"),
                                                                   format="lmsys")],
                                   heldout_fraction=0.0, max_conversations=None)
        return dataclasses.replace(
            cfg, data=data, model=dataclasses.replace(cfg.model, name=plan["parent_path"], revision=None),
            train=dataclasses.replace(t, max_steps=steps, warmup_steps=min(t.warmup_steps, steps // 2)),
            eval=dataclasses.replace(cfg.eval, schedule=[], final_suite=None, every=0),
            logging=dataclasses.replace(cfg.logging, progress=False), output_dir=str(rdir / "run"))

    def _train(self, plan: dict, rdir: Path) -> dict:
        from ..experiments.export import export
        from ..train.build import build_trainer, set_up_run
        from ..train.checkpoint import link_final
        from ..train.loop import RunStopped
        done = rdir / "training.json"
        if done.is_file():
            return json.loads(done.read_text())
        cfg = self._round_config(plan, rdir)
        run_dir = rdir / "run"
        resume = bool(complete_checkpoints(run_dir))
        if run_dir.exists() and not resume:
            shutil.rmtree(run_dir)  # killed before its first checkpoint: start the round's training again
        started = time.time()
        setup = set_up_run(cfg, run_dir, resume=resume)
        out: dict = {"steps_planned": cfg.train.max_steps, "resumed": resume}
        try:
            trainer = build_trainer(setup)
            if self.on_trainer is not None:
                self.on_trainer(trainer)
            summary = trainer.run()
            out.update(steps=summary["steps"], final_loss=summary["final_loss"], tokens=summary["tokens"],
                       skipped_steps=summary["skipped_steps"], tokens_per_s=summary["tokens_per_s"],
                       precision=summary["precision"], method=summary["method_label"])
            if summary["skipped_steps"]:
                out["non_finite"] = f"{summary['skipped_steps']} steps with a non-finite loss or gradient"
        except RunStopped as e:
            out["non_finite"] = str(e)
        finally:
            setup.dist.close()
        if "non_finite" not in out:
            link_final(run_dir)
            candidate = rdir / "candidate"
            shutil.rmtree(candidate, ignore_errors=True)
            export(run_dir, candidate, merge=setup.method.adapter)
            out["candidate"] = str(candidate)
        out["seconds"] = round(time.time() - started, 1)
        _write_json(done, out)
        return out

    def _gate(self, plan: dict, rdir: Path, training: dict) -> dict:
        from .gate import Gate
        path = rdir / "gate.json"
        if path.is_file():
            return json.loads(path.read_text())
        if "non_finite" in training:
            decision = {"promote": False, "reasons": [f"training: {training['non_finite']}"],
                        "checks": {"training": {"status": "fail", "detail": training["non_finite"]}}, "figures": {}}
        else:
            device = resolve_device(self.cfg.model.device)
            prec = precision_mod.resolve(self.cfg.train.precision, device)
            tokenizer = load_tokenizer(plan["parent_path"])
            spec = model_spec(self.cfg.model.name, self.cfg.model.revision)
            gate = Gate(self.cfg, tokenizer, spec, rdir / "data" / "heldout.jsonl" if plan["heldout"] else None,
                        rdir / "gate", self.dir / "gate-cache")
            current = {"id": plan["parent"], "path": plan["parent_path"]}
            base = self.store.version(BASE_VERSION)
            decision = gate.judge(current, training["candidate"], f"v{plan['round']}", prec, training,
                                  base={"id": base["id"], "path": base["path"]} if base else None)
        decision["unmeasured"] = self.unmeasured()
        _write_json(path, decision)
        return decision

    def _commit(self, n: int, plan: dict, rdir: Path, decision: dict, record: dict) -> None:
        vid = f"v{n}"
        if self.store.version(vid) is not None:
            return  # committed before a kill: nothing to redo
        final = self.dir / "versions" / vid
        candidate = rdir / "candidate"
        if decision["promote"]:
            final.parent.mkdir(parents=True, exist_ok=True)
            if candidate.is_dir():
                if final.exists():  # a folder left by a kill before the commit: not served, replace it
                    shutil.rmtree(final)
                os.replace(candidate, final)
            elif not final.is_dir():
                raise UserError(f"round {n}: the candidate folder is gone and {final} does not exist")
        row = {"id": vid, "parent": plan["parent"], "status": "promoted" if decision["promote"] else "rejected",
               "path": str(final if decision["promote"] else candidate), "seq_from": plan["after"],
               "seq_to": plan["upto"], "conversations": plan["train_rows"], "round": n,
               "gate": {"reasons": decision["reasons"], "checks": decision["checks"],
                        "figures": decision.get("figures", {}), "intake": plan["intake"]}}
        self.store.record_version(row, {CURSOR: str(plan["upto"]), ROUND: str(n)},
                                  make_current=decision["promote"])


def rollback(store: Store, version_id: str) -> dict:
    """Make an older promoted (or the base) version current; the server swaps to it between requests."""
    before = store.pointer("current_version")
    row = store.version(version_id)
    path = Path(row["path"]) if row and row.get("path") else None
    if row is not None and row["status"] != "base" and not (path and path.is_dir()):
        # the server would keep the old version and log a failed swap every poll: refuse here, with the path
        raise UserError(f"version {version_id}: its model folder {path} is gone; restore it first")
    store.set_current(version_id)
    return {"from": before, "to": version_id}


def versions_table(store: Store) -> str:
    current = store.pointer("current_version")
    lines = [f"{'version':8} {'status':9} {'parent':7} {'conversations':>13}  gate"]
    for v in store.versions():
        gate = v.get("gate") or {}
        figs = gate.get("figures", {}).get("candidate", {})
        shown = ", ".join(f"{k} {val:.3g}" for k, val in figs.items() if isinstance(val, (int, float)))
        why = "; ".join(gate.get("reasons", []))
        mark = "*" if v["id"] == current else " "
        lines.append(f"{mark}{v['id']:7} {v['status']:9} {v['parent'] or '-':7} "
                     f"{v['conversations'] if v['conversations'] is not None else '-':>13}  "
                     f"{shown}{' | rejected: ' + why if why else ''}")
    return "\n".join(lines) + "\n(* current)"


def learn(cfg, once: bool = False, rounds: int | None = None) -> int:
    learner = Learner(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    (learner.dir / "learn-config.yaml").write_text(dump_config(cfg))
    done = learner.run(rounds=rounds, once=once)
    for r in done:
        print(json.dumps({k: r.get(k) for k in ("round", "status", "version", "seconds")}))
    return 0
