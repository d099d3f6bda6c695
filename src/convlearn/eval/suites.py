"""Named evaluation suites on one model, at scheduled steps, each writing `evals/step-N.json`. A suite is a list
of registered evaluations (eval/evaluations/, one module each); this module only schedules and runs them.

The same `RunEvaluator` serves the training loop's hook (the live model) and `convlearn eval` (a checkpoint or
hub model): every figure is computed by the same code either way.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from huggingface_hub import constants

from ..data.prepare import renderer_for
from ..data.records import Conversation, DataStats, Document
from ..data.splits import original_eval_documents
from ..data.stream import read_source
from ..errors import UserError
from .benchmarks import Benchmarks
from .evaluations import EvalContext, check_suites, evaluation_for
from .records import EvalRecord

if TYPE_CHECKING:
    from ..config import EvalConfig, RunConfig


def schedule_for(eval_cfg: EvalConfig, max_steps: int) -> dict[int, str]:
    """step -> suite: the configured schedule within the run, the periodic suite every `every` steps, plus the
    final suite at the last step. Where two fall on one step both run (`a+b`: the union of their evaluations),
    so a scheduled entry never leaves a gap in a periodic series."""
    plan: dict[int, list[str]] = {}
    if eval_cfg.every:
        for step in range(eval_cfg.every, max_steps + 1, eval_cfg.every):
            plan[step] = [eval_cfg.every_suite]
    for e in eval_cfg.schedule:
        if e.step <= max_steps and e.suite not in plan.setdefault(e.step, []):
            plan[e.step].append(e.suite)
    if eval_cfg.final_suite is not None and max_steps not in plan:
        plan[max_steps] = [eval_cfg.final_suite]
    return {step: "+".join(suites) for step, suites in sorted(plan.items())}


def suite_items(eval_cfg: EvalConfig, suite: str) -> list[str]:
    """The evaluations of a suite name, or of `a+b` (their union, in order)."""
    return list(dict.fromkeys(item for name in suite.split("+") for item in eval_cfg.suites[name]))


def _domain_map(path: str) -> dict[str, str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"eval.domain_map: no such file {p}")
    if p.suffix == ".json":
        return {str(k): str(v) for k, v in json.loads(p.read_text()).items()}
    with open(p, newline="", encoding="utf-8") as fh:
        return {row["conversation_id"]: row["domain"] for row in csv.DictReader(fh)}


class RunEvaluator:
    """Runs suites of registered evaluations (eval/evaluations/) on a model and writes `evals/step-N.json`. It
    keeps what does not depend on the model (held-out samples, answer pairs, original text, lm-eval tasks)
    across calls; each call hands its evaluations an `EvalContext`."""

    def __init__(self, cfg: RunConfig, tokenizer, spec, out_dir: Path, *, samples=None,
                 conversations: Callable[[], list[Conversation]] | None = None, suites: set[str] | None = None):
        """`samples`: the tokenized samples the perplexity evaluations score (a datasets.Dataset; at most
        eval.heldout_samples of them), `conversations`: the conversations the quality prompts come from; both
        never trained on. `for_run` takes them from a run's prepared data."""
        check_suites(cfg.eval)  # config/ cannot see the registry: unknown items fail here, before any work
        self.cfg, self.ecfg, self.tok = cfg, cfg.eval, tokenizer
        self.out = Path(out_dir)
        self.evals_dir = self.out / "evals"
        self.renderer = renderer_for(cfg, tokenizer, spec)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        samples = samples if samples is not None else []
        n = len(samples) if self.ecfg.heldout_samples is None else min(self.ecfg.heldout_samples, len(samples))
        self.heldout = samples.select(range(n)) if n < len(samples) else samples
        self._conversations = conversations or list
        self._pairs: list[dict] | None = None
        self._original = None
        self._benchmarks = None
        self.domain_map = _domain_map(self.ecfg.domain_map) if self.ecfg.domain_map else None
        self._check_offline(suites)

    @classmethod
    def for_run(cls, cfg: RunConfig, tokenizer, spec, prepared, out_dir: Path, suites: set[str] | None = None
                ) -> "RunEvaluator":
        """The evaluator of a run: its prepared data's held-out side."""
        return cls(cfg, tokenizer, spec, out_dir, samples=prepared.dataset("heldout"),
                   conversations=prepared.heldout_conversations, suites=suites)

    def _check_offline(self, suites: set[str] | None) -> None:
        """Offline, fail before any work if an evaluation of a suite that will run needs the hub (naming the
        key)."""
        if not constants.HF_HUB_OFFLINE:
            return
        if suites is None:
            suites = {e.suite for e in self.ecfg.schedule} | {self.ecfg.final_suite} - {None}
            if self.ecfg.every:
                suites.add(self.ecfg.every_suite)
        used = dict.fromkeys(item for name in sorted(suites) for item in suite_items(self.ecfg, name))
        for name in used:
            evaluation_for(name).check_offline(self.ecfg)

    # -- lazily built inputs ----------------------------------------------------------------------------
    def pairs(self) -> list[dict]:
        if self._pairs is None:
            self._pairs = []
            for conv in self._conversations():
                self._pairs.extend(self.renderer.prompt_response_pairs(conv))
                if len(self._pairs) >= self.ecfg.quality_prompts:
                    break
            self._pairs = self._pairs[:self.ecfg.quality_prompts]
        return self._pairs

    def original(self):
        """The original-distribution documents, tokenized once, as an in-memory dataset."""
        if self._original is None:
            import datasets  # ~1 s to import: only when the original text is scored
            docs = [d for d in read_source(self.ecfg.original, DataStats())
                    if isinstance(d, Document)]
            docs = original_eval_documents(self.cfg, docs)
            samples = [s for group in self.renderer.render_documents(docs) for s in group]
            self._original = datasets.Dataset.from_dict({
                "doc_id": [f"{s.conversation_id}#{s.window}" for s in samples],
                "input_ids": [s.input_ids.tolist() for s in samples],
                "token_mask": [s.token_mask.tolist() for s in samples],
                "token_bytes": [s.token_bytes.tolist() for s in samples]})
        return self._original

    def benchmarks(self):
        if self._benchmarks is None:
            self._benchmarks = Benchmarks(self.ecfg, self.out / "lm_eval_tasks")
        return self._benchmarks

    # -- a suite ---------------------------------------------------------------------------------------
    def context(self, step: int) -> EvalContext:
        """What one run() call gives its evaluations (a fresh one per call: the held-out losses it caches
        belong to that call's model)."""
        return EvalContext(ecfg=self.ecfg, tokenizer=self.tok, renderer=self.renderer, heldout=self.heldout,
                           pad=self.pad, out=self.out, evals_dir=self.evals_dir, step=step,
                           domain_map=self.domain_map, pairs=self.pairs, original=self.original,
                           benchmarks=self.benchmarks)

    def step0_key(self, suite: str) -> str:
        """What a step-0 evaluation depends on when step 0 is the run's base: the model (its files), the precision,
        the eval section (and the files it names), the suite and the held-out samples themselves. Two runs with
        the same key evaluate the same weights on the same inputs in the same way."""
        from ..models import resolve_name
        ecfg = dataclasses.asdict(self.ecfg)
        paths = [self.cfg.model.name, self.ecfg.probes, self.ecfg.domain_map,
                 *(b.data_dir for b in self.ecfg.benchmarks)]
        if self.ecfg.original is not None:
            paths.append(self.ecfg.original.path)
        files = {str(p): _signature(Path(resolve_name(p) if p == self.cfg.model.name else p)) for p in paths if p}
        ids = [list(x) for x in self.heldout["input_ids"]] if len(self.heldout) else []
        held = hashlib.sha256(json.dumps(ids).encode())
        key = {"model": self.cfg.model.name, "revision": self.cfg.model.revision, "files": files,
               "precision": self.cfg.train.precision, "device": self.cfg.model.device, "eval": ecfg,
               "suite": suite, "heldout": held.hexdigest(), "render": dataclasses.asdict(self.cfg.render)}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def run(self, model, step: int, suite: str) -> dict:
        ctx = self.context(step)
        record = {"step": step, "suite": suite, "evaluations": {}, "seconds": {},
                  "settings": {"heldout_samples": len(self.heldout), "batch_size": self.ecfg.batch_size}}
        for name in suite_items(self.ecfg, suite):
            started = time.perf_counter()
            record["evaluations"][name] = evaluation_for(name).run(ctx, model)
            record["seconds"][name] = round(time.perf_counter() - started, 3)
        self.evals_dir.mkdir(parents=True, exist_ok=True)
        (self.evals_dir / f"step-{step}.json").write_text(json.dumps(record, indent=2, default=_json))
        return record


def headline(record: dict) -> dict:
    """The scalars worth a curve: conversation/original perplexity, quality, probes, benchmark scores."""
    return EvalRecord.from_json(record).headline()


class ScheduledEvaluator:
    """The training loop's evaluator: the suite scheduled at a step (the final suite at the run's last step when
    none is scheduled there) on the live model; returns the headline scalars for telemetry."""

    def __init__(self, evaluator: RunEvaluator, eval_cfg: EvalConfig, max_steps: int):
        self.evaluator = evaluator
        self.schedule = schedule_for(eval_cfg, max_steps)
        self.final_suite = eval_cfg.final_suite

    def due(self, step: int, last: bool = False) -> bool:
        return step in self.schedule or (last and self.final_suite is not None)

    def run(self, step: int, model) -> dict:
        suite = self.schedule.get(step) or self.final_suite
        if step == 0 and self.evaluator.ecfg.share_step0:
            return headline(self._shared_step0(model, suite))
        return headline(self.evaluator.run(model, step, suite))

    def _shared_step0(self, model, suite: str) -> dict:
        """eval.share_step0: the base's step-0 evaluation once per key (`RunEvaluator.step0_key`) in the data
        cache; a run whose key matches takes a copy, marked `shared_from`, instead of evaluating again."""
        ev = self.evaluator
        key = ev.step0_key(suite)
        cached = Path(ev.cfg.data.cache_dir) / "step0" / f"{key}.json"
        target = ev.evals_dir / "step-0.json"
        if cached.is_file():
            record = json.loads(cached.read_text())
            record["shared_from"] = key
            ev.evals_dir.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(record, indent=2))
            return record
        record = ev.run(model, 0, suite)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.tmp")
        shutil.copy(target, tmp)
        tmp.replace(cached)
        return record


def _signature(path: Path) -> list:
    """(name, size, mtime) of a file, or of every file under a folder: a changed input changes the key."""
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    if path.is_dir():
        return [x for f in sorted(path.rglob("*")) if f.is_file() for x in _signature(f)]
    return [str(path)]  # a hub id or a built-in source name


def _json(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return str(x)
