"""The gate: a round's candidate against the version serving now, on the same held-out store conversations and
probes, and against the base version on original-distribution text and the retention benchmark (forgetting is
bounded in total, not per round); promoted only if no check fails.

Every check is a paired comparison on the same samples (experiments/stats.py) and is recorded with its figure,
its interval and its bound; a check whose inputs are not configured is recorded as not measured (and the
learner says so when it starts), never passed silently. Decisions use the point estimate against the bound: a
gate errs towards keeping the model that serves now.

The current version's figures on the fixed parts (original text, benchmark, probes) are cached per version;
the held-out conversations grow between rounds, so both models are scored on them every round.
"""
from __future__ import annotations

import dataclasses
import json
import math
from contextlib import nullcontext
from pathlib import Path

import torch

from ..config import SourceConfig
from ..data.prepare import prepare
from ..eval.records import EvalRecord
from ..eval.suites import RunEvaluator
from ..eval.stats import accuracy_change, ppl_change
from ..models import load_from_config

CONVERSATIONS = ["conversation_ppl"]


class _AllHeldout:
    """The gate's prepared conversations: all of them are the held-out side (they were never trained on)."""

    def __init__(self, prepared):
        self.prepared, self.meta = prepared, prepared.meta

    def dataset(self, split: str):
        return self.prepared.dataset("train")

    def heldout_conversations(self) -> list:
        return []


def gate_config(cfg, heldout_file: Path | None):
    e = cfg.eval
    fixed = [name for name, on in (("original_ppl", e.original is not None), ("benchmarks", bool(e.benchmarks)),
                                   ("probes", bool(e.probes))) if on]  # what is off is recorded as not measured
    suites = {**e.suites, "gate_conversations": CONVERSATIONS, "gate_fixed": fixed}
    data = dataclasses.replace(cfg.data, sources=[SourceConfig(path=str(heldout_file), format="lmsys")]
                               if heldout_file else [], heldout_fraction=0.0, max_conversations=None)
    return dataclasses.replace(cfg, data=data, render=dataclasses.replace(cfg.render, pack=False),
                               eval=dataclasses.replace(cfg.eval, suites=suites,
                                                        heldout_samples=cfg.learn.gate_conversations))


class Gate:
    def __init__(self, cfg, tokenizer, spec, heldout_file: Path | None, work: Path, cache: Path):
        self.cfg, self.work, self.cache = cfg, Path(work), Path(cache)
        gcfg = gate_config(cfg, heldout_file)
        if heldout_file is not None:
            prepared = _AllHeldout(prepare(gcfg, tokenizer, spec, progress=False))
        else:
            prepared = _Empty()
        self.evaluator = RunEvaluator(gcfg, tokenizer, spec, prepared, self.work, suites={"gate_fixed"})

    def _score(self, folder: str, version: str, step: int, precision: str, conversations: bool = True) -> dict:
        """conversation perplexity (unless `conversations` is off); original text, benchmark and probes from the
        cache when this version was scored before."""
        cached = self.cache / f"{version}.json"
        if not conversations and cached.is_file():
            return json.loads(cached.read_text())
        model = load_from_config(self.cfg.model, weights=folder,
                                 dtype="bfloat16" if precision == "bf16-mixed" else "float32").eval()
        with torch.no_grad(), (torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16-mixed"
                               else nullcontext()):
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

    def judge(self, current: dict, candidate_folder: str, candidate_id: str, precision: str,
              training: dict, base: dict | None = None) -> dict:
        """`base` (the store's first version): forgetting is bounded against it, so rounds cannot add up
        small losses that each pass against their parent."""
        before = EvalRecord.from_json(self._score(current["path"], current["id"], 0, precision))
        after = EvalRecord.from_json(self._score(candidate_folder, candidate_id, 1, precision))
        origin = before if base is None or base["id"] == current["id"] else \
            EvalRecord.from_json(self._score(base["path"], base["id"], 0, precision, conversations=False))
        return decide(self.cfg, before, after, training, origin=origin,
                      origin_id=(base or current)["id"])


class _Empty:
    meta: dict = {}

    def dataset(self, split: str):
        import datasets
        return datasets.Dataset.from_dict({"input_ids": [], "token_mask": [], "assistant_mask": [],
                                           "token_bytes": [], "conversation_id": [], "window": []})

    def heldout_conversations(self) -> list:
        return []


def decide(cfg, before: EvalRecord, after: EvalRecord, training: dict, origin: EvalRecord | None = None,
           origin_id: str = "the current version") -> dict:
    """{promote, checks: {name: {status, figure, low, high, bound, ...}}, reasons, figures}. Learning and probes
    are compared with `before` (the version serving now); forgetting (original text, retention) with `origin`
    (the base version; `before` when absent), so the bounds hold for the sum of all rounds."""
    g, crit = cfg.learn.gate, cfg.eval.criteria
    origin = origin or before
    n_boot, conf = crit.bootstrap_samples, crit.confidence
    checks: dict[str, dict] = {}

    bad = training.get("non_finite")
    checks["training"] = {"status": "fail" if bad else "pass", "detail": bad or
                          f"{training.get('steps', 0)} steps, final loss {training.get('final_loss')}"}

    conv_b, conv_a = before.per_sample("conversation_ppl"), after.per_sample("conversation_ppl")
    ch = ppl_change(conv_b, conv_a, "assistant", n_boot, conf) if conv_b and conv_a else None
    if ch is None:
        checks["learning"] = {"status": "fail" if g.require_heldout else "not measured",
                              "detail": "no held-out store conversation to measure learning on yet"
                              + (" (learn.gate.require_heldout)" if g.require_heldout else "")}
    else:
        checks["learning"] = _bound(ch["change"], ch, g.conversation_ppl_tolerance,
                                    "held-out conversation perplexity (assistant tokens), relative change")

    orig_b, orig_a = origin.per_sample("original_ppl"), after.per_sample("original_ppl")
    ch = ppl_change(orig_b, orig_a, "all", n_boot, conf) if orig_b and orig_a else None
    checks["original_text"] = _bound(ch["change"], ch, g.original_ppl_increase,
                                     f"original-distribution perplexity vs {origin_id}, relative change") if ch \
        else {"status": "not measured", "detail": "eval.original is null"}

    name = crit.retention_benchmark
    _, _, fig_b = origin.retention(name)
    _, _, fig_a = after.retention(name)
    ch = accuracy_change(fig_b.get("correct") or [], fig_a.get("correct") or [], n_boot, conf)
    checks["retention"] = _bound(-ch["change_points"], {"low": -ch["high"], "high": -ch["low"], **ch},
                                 g.retention_points, f"{name} drop in points vs {origin_id}", strict=True) if ch \
        else {"status": "not measured", "detail": f"no per-question results of {name} (eval.benchmarks)"}

    ch = accuracy_change(before.probe_correct(), after.probe_correct(), n_boot, conf)
    checks["probes"] = _bound(-ch["change_points"], {"low": -ch["high"], "high": -ch["low"], **ch},
                              g.probe_points, "knowledge probes (held-out phrasings) drop in points",
                              strict=True) if ch else {"status": "not measured", "detail": "eval.probes is null"}

    failed = [k for k, c in checks.items() if c["status"] == "fail"]
    reasons = [f"{k}: {_why(c)}" for k, c in checks.items() if c["status"] == "fail"]
    return {"promote": not failed, "reasons": reasons, "checks": checks,
            "figures": _figures(before, after, name, origin if origin is not before else None, origin_id)}


def _bound(value: float, interval: dict, bound: float, what: str, strict: bool = False) -> dict:
    """fail when value > bound (or >= for `strict`: the plan's "Δ < 3 points")."""
    over = value >= bound if strict else value > bound
    if not math.isfinite(value):
        over = True
    return {"status": "fail" if over else "pass", "what": what, "value": value, "low": interval.get("low"),
            "high": interval.get("high"), "bound": bound, **{k: interval[k] for k in ("samples", "questions",
                                                                                      "p_value") if k in interval}}


def _why(check: dict) -> str:
    if "value" not in check:
        return check.get("detail", "")
    v, b = check["value"], check["bound"]
    fmt = (lambda x: f"{100 * x:+.1f}%") if "relative" in check["what"] else (lambda x: f"{x:+.1f}")
    return (f"{check['what']} {fmt(v)} [{fmt(check['low'])}, {fmt(check['high'])}] over the bound {fmt(b)}"
            if check.get("low") is not None else f"{check['what']} {fmt(v)} over the bound {fmt(b)}")


def _figures(before: EvalRecord, after: EvalRecord, benchmark: str, origin: EvalRecord | None = None,
             origin_id: str = "") -> dict:
    out = {}
    pairs = [("current", before), ("candidate", after)] + ([("base", origin)] if origin is not None else [])
    for label, rec in pairs:
        conv = rec.perplexity("conversation_ppl", "assistant")
        orig = rec.perplexity("original_ppl")
        ret, _, _ = rec.retention(benchmark)
        out[label] = {"conversation_ppl": conv.ppl if conv else None, "original_ppl": orig.ppl if orig else None,
                      "retention": ret, "probes_heldout": rec.probe("ll_accuracy", heldout=True),
                      "probes": rec.probe("ll_accuracy")}
    return out
