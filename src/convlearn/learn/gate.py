"""The gate: a round's candidate against the version serving now, on the same held-out store conversations and
probes, and against the base version on original-distribution text and the retention benchmark (forgetting is
bounded in total, not per round); promoted only if no check fails.

Every check is a paired comparison on the same samples (eval/stats.py) and is recorded with its figure,
its interval and its bound; a check whose inputs are not configured is recorded as not measured (and the
learner says so when it starts), never passed silently; a check that is configured but comes out not measured
(no per-question results, lists that do not pair) blocks promotion with its reason. Forgetting and probes are
decided on the pessimistic end of their interval, learning's non-regression on its point estimate: a gate errs
towards keeping the model that serves now. Forgetting and probes are bounded against the base version v0, so
small drops that each pass against their parent cannot add up.

The current version's figures on the fixed parts (original text, benchmark, probes) are cached per version and
per evaluation settings (a changed benchmark limit is a new cache entry, never a stale list un-paired with the
candidate's); the held-out conversations grow between rounds, so both models are scored on them every round.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import torch

from ..config import RunConfig, SourceConfig
from ..data.prepare import prepare
from ..eval.records import EvalRecord
from ..eval.stats import accuracy_change, ppl_change
from ..eval.suites import RunEvaluator
from ..models import load_from_config, resolve_device
from ..precision import resolve_precision
from ..store import Version
from .records import Check, GateDecision, Status, TrainingOutcome, Unit

CONVERSATIONS = ["conversation_ppl"]


def gate_config(cfg: RunConfig, heldout_file: Path | None):
    e = cfg.eval
    fixed = [name for name, on in (("original_ppl", e.original is not None), ("benchmarks", bool(e.benchmarks)),
                                   ("probes", bool(e.probes))) if on]  # what is off is recorded as not measured
    suites = {**e.suites, "gate_conversations": CONVERSATIONS, "gate_fixed": fixed}
    data = dataclasses.replace(cfg.data, sources=[SourceConfig(path=str(heldout_file), format="convlearn")]
                               if heldout_file else [], heldout_fraction=0.0, max_conversations=None)
    return dataclasses.replace(cfg, data=data, render=dataclasses.replace(cfg.render, pack=False),
                               eval=dataclasses.replace(cfg.eval, suites=suites,
                                                        heldout_samples=cfg.learn.gate_conversations))


class Gate:
    """Scores versions on the round's held-out store conversations (never trained on: all of the prepared file is
    the evaluated side) and on the fixed evaluations, under the run's one precision policy."""

    def __init__(self, cfg: RunConfig, tokenizer, spec, heldout_file: Path | None, work: Path, cache: Path):
        self.cfg, self.work, self.cache = cfg, Path(work), Path(cache)
        self.precision = resolve_precision(cfg.train.precision, resolve_device(cfg.model.device))
        gcfg = gate_config(cfg, heldout_file)
        samples = prepare(gcfg, tokenizer, spec, progress=False).dataset("train") if heldout_file else None
        self.evaluator = RunEvaluator(gcfg, tokenizer, spec, self.work, samples=samples, suites={"gate_fixed"})

    def cache_key(self) -> str:
        """What the fixed figures depend on besides the weights: the evaluation section, rendering, precision."""
        from ..config.schema import to_dict
        material = {"eval": to_dict(self.cfg.eval), "render": to_dict(self.cfg.render),
                    "precision": self.precision.mode}
        return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _score(self, folder: str, version: str, step: int, conversations: bool = True) -> dict:
        """conversation perplexity (unless `conversations` is off); original text, benchmark and probes from the
        cache when this version was scored before with the same evaluation settings."""
        cached = self.cache / f"{version}-{self.cache_key()}.json"
        if not conversations and cached.is_file():
            return json.loads(cached.read_text())
        model = load_from_config(self.cfg.model, weights=folder, precision=self.precision).eval()
        with torch.no_grad(), self.precision.autocast():
            conv = self.evaluator.run(model, step, "gate_conversations") if conversations else None
            if cached.is_file():
                fixed = json.loads(cached.read_text())
            else:
                fixed = self.evaluator.run(model, step, "gate_fixed")
                self.cache.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(".tmp")
                tmp.write_text(json.dumps(fixed))
                tmp.replace(cached)
        del model
        if conv is None:
            return fixed
        return {**fixed, "step": step, "evaluations": {**fixed["evaluations"], **conv["evaluations"]},
                "seconds": {**fixed.get("seconds", {}), **conv["seconds"]}}

    def judge(self, current: Version, candidate_folder: str, candidate_id: str, training: TrainingOutcome,
              base: Version | None = None) -> GateDecision:
        """`base` (the store's first version): forgetting is bounded against it, so rounds cannot add up
        small losses that each pass against their parent."""
        before = EvalRecord.from_json(self._score(current.path, current.id, 0))
        after = EvalRecord.from_json(self._score(candidate_folder, candidate_id, 1))
        origin = before if base is None or base.id == current.id else \
            EvalRecord.from_json(self._score(base.path, base.id, 0, conversations=False))
        return decide(self.cfg, before, after, training, origin=origin, origin_id=(base or current).id)


def decide(cfg: RunConfig, before: EvalRecord, after: EvalRecord, training: TrainingOutcome,
           origin: EvalRecord | None = None, origin_id: str = "the current version") -> GateDecision:
    """Every check with its figure, interval and bound. Learning is compared with `before` (the version serving
    now); forgetting (original text, retention) and the probes with `origin` (the base version; `before` when
    absent), so the bounds hold for the sum of all rounds."""
    g, e = cfg.learn.gate, cfg.eval
    crit = e.criteria
    origin = origin or before
    n_boot, conf = crit.bootstrap_samples, crit.confidence
    checks: dict[str, Check] = {"training": training.check()}

    conv_b, conv_a = before.per_sample("conversation_ppl"), after.per_sample("conversation_ppl")
    ch = ppl_change(conv_b, conv_a, "assistant", n_boot, conf) if conv_b and conv_a else None
    if ch is None:
        checks["learning"] = Check(Status.FAIL if g.require_heldout else Status.NOT_MEASURED,
                                   detail="no held-out store conversation to measure learning on yet"
                                   + (" (learn.gate.require_heldout)" if g.require_heldout else ""))
    else:
        checks["learning"] = _bound(ch["change"], ch, g.conversation_ppl_tolerance, Unit.RELATIVE,
                                    "held-out conversation perplexity (assistant tokens), relative change",
                                    pessimistic=False)

    orig_b, orig_a = origin.per_sample("original_ppl"), after.per_sample("original_ppl")
    ch = ppl_change(orig_b, orig_a, "all", n_boot, conf) if orig_b and orig_a else None
    checks["original_text"] = _bound(ch["change"], ch, g.original_ppl_increase, Unit.RELATIVE,
                                     f"original-distribution perplexity vs {origin_id}, relative change") if ch \
        else _unmeasured(e.original is not None, "no paired per-document perplexities of eval.original"
                         if e.original is not None else "eval.original is null")

    name = crit.retention_benchmark
    _, _, fig_b = origin.retention(name)
    _, _, fig_a = after.retention(name)
    ch = accuracy_change(fig_b.get("correct") or [], fig_a.get("correct") or [], n_boot, conf)
    configured = any(b.name == name for b in e.benchmarks)
    checks["retention"] = _drop(ch, g.retention_points, f"{name} drop in points vs {origin_id}") if ch \
        else _unmeasured(configured, f"no paired per-question results of {name} for both models" if configured
                         else f"{name} is not in eval.benchmarks")

    # clustered by fact: the phrasings of one fact are one piece of evidence (a fact lost counts once)
    facts = after.probe_facts()
    ch = accuracy_change(origin.probe_correct(), after.probe_correct(), n_boot, conf,
                         clusters=facts if facts and facts == origin.probe_facts() else None)
    control = after.probe_control()
    checks["probes"] = _drop(ch, g.probe_points, f"knowledge probes (held-out phrasings, clustered by fact) drop "
                                                 f"in points vs {origin_id}"
                             + ("" if control is None else f"; mismatched-subject control {control:.2f}")) if ch \
        else _unmeasured(bool(e.probes), "no paired probe results for both models" if e.probes
                         else "eval.probes is null")
    return GateDecision.of(checks, _figures(before, after, name, origin if origin is not before else None))


def _unmeasured(configured: bool, detail: str) -> Check:
    """Not measured; blocking when its inputs are configured (it should have been measured)."""
    return Check(Status.NOT_MEASURED, detail=detail, blocking=configured)


def _drop(ch: dict, bound: float, what: str) -> Check:
    """An accuracy change as a drop in points (positive = worse), its interval turned with it."""
    return _bound(-ch["change_points"], {**ch, "low": -ch["high"], "high": -ch["low"]}, bound, Unit.POINTS, what,
                  strict=True)


def _bound(value: float, interval: dict, bound: float, unit: Unit, what: str, strict: bool = False,
           pessimistic: bool = True) -> Check:
    """fail when the judged figure > bound (or >= for `strict`: the plan's "Δ < 3 points"). The judged figure is
    the interval's pessimistic end (its high end: every figure here is "larger is worse"), or the point estimate
    where `pessimistic` is off. A missing or zero-width interval of a non-constant figure is not an interval."""
    low, high = interval.get("low"), interval.get("high")
    judged = high if pessimistic and high is not None else value
    over = judged >= bound if strict else judged > bound
    if not math.isfinite(value) or not math.isfinite(judged):
        over = True
    return Check(Status.FAIL if over else Status.PASS, what, value, low, high, bound, unit,
                 samples=interval.get("samples"), questions=interval.get("questions"),
                 p_value=interval.get("p_value"), judged=judged, blocking=True)


def _figures(before: EvalRecord, after: EvalRecord, benchmark: str, origin: EvalRecord | None = None) -> dict:
    out = {}
    pairs = [("current", before), ("candidate", after)] + ([("base", origin)] if origin is not None else [])
    for label, rec in pairs:
        conv = rec.perplexity("conversation_ppl", "assistant")
        orig = rec.perplexity("original_ppl")
        ret, _, _ = rec.retention(benchmark)
        out[label] = {"conversation_ppl": conv.ppl if conv else None, "original_ppl": orig.ppl if orig else None,
                      "retention": ret, "probes_heldout": rec.probe("ll_accuracy", heldout=True),
                      "probes_control": rec.probe_control(), "probes_lift": rec.probe_test("lift").get("difference"),
                      "probes": rec.probe("ll_accuracy")}
    return out
