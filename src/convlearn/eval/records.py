"""The evaluation record (`evals/step-N.json`) as a typed object: the one place that knows its layout.

Every reader (headline scalars, forgetting, adaptation, the report's figures) asks an `EvalRecord`; none walks
the JSON itself, so a change to what an evaluation writes is a change here.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

PERPLEXITIES = ("conversation_ppl", "original_ppl")
BENCHMARK_KINDS = ("benchmarks", "mmlu_quick")


@dataclass(frozen=True)
class Perplexity:
    """One perplexity figure over one mask: nats per token, perplexity, bits per byte and their counts."""
    loss: float
    ppl: float
    bits_per_byte: float
    tokens: int
    bytes: int
    loss_se: float | None = None  # standard error of `loss` over the samples (perplexity.figures)

    @classmethod
    def from_json(cls, d: dict | None) -> "Perplexity | None":
        if not isinstance(d, dict) or "loss" not in d:
            return None
        nan = float("nan")
        return cls(d["loss"], d.get("ppl", nan), d.get("bits_per_byte", nan), int(d.get("tokens", 0)),
                   int(d.get("bytes", 0)), d.get("loss_se"))


@dataclass
class EvalRecord:
    step: int
    suite: str = ""
    evaluations: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict) -> "EvalRecord":
        return cls(int(d["step"]), d.get("suite", ""), d.get("evaluations", {}), d.get("seconds", {}),
                   d.get("settings", {}))

    def _get(self, *path):
        node = self.evaluations
        for p in path:
            if not isinstance(node, dict) or p not in node:
                return None
            node = node[p]
        return node

    def _number(self, *path) -> float | None:
        v = self._get(*path)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    # -- perplexities ----------------------------------------------------------------------------------
    def perplexity(self, name: str, mask: str = "all") -> Perplexity | None:
        """`conversation_ppl` or `original_ppl` over `all` tokens or `assistant` tokens (None if absent or
        without tokens under that mask)."""
        fig = Perplexity.from_json(self._get(name, mask))
        return fig if fig is not None and (mask == "all" or fig.tokens) else None

    def domain_perplexity(self, grouping: str = "domain", mask: str = "all") -> dict[str, Perplexity]:
        groups = self._get("domain_ppl", "groups", grouping) or {}
        out = {}
        for label, fig in groups.items():
            p = Perplexity.from_json(fig.get(mask) if isinstance(fig, dict) else None)
            if p is not None:
                out[label] = p
        return out

    # -- benchmarks ------------------------------------------------------------------------------------
    def benchmark_scores(self) -> dict[tuple[str, str], float]:
        """(kind, task) -> score, for the lm-eval benchmarks and the MMLU quick-eval."""
        out = {}
        for kind in BENCHMARK_KINDS:
            for name, fig in (self._get(kind) or {}).items():
                if isinstance(fig, dict) and isinstance(fig.get("score"), (int, float)):
                    out[(kind, name)] = float(fig["score"])
        return out

    def benchmark(self, name: str, kind: str = "benchmarks") -> float | None:
        return self.benchmark_scores().get((kind, name))

    def mmlu(self) -> tuple[float | None, str | None]:
        """MMLU accuracy: the full benchmark if it ran, else the quick-eval; and which one it is."""
        return self.retention("mmlu")[:2]

    def retention(self, benchmark: str = "mmlu") -> tuple[float | None, str | None, dict]:
        """The retention benchmark's score, where it came from (`benchmarks` or, for mmlu, the quick-eval when
        the full one did not run), and its whole figure (per-question `correct`, `chance`, `stderr`)."""
        places = [("benchmarks", benchmark)] + ([("mmlu_quick", "mmlu_quick")] if benchmark == "mmlu" else [])
        for kind, name in places:
            v = self.benchmark(name, kind)
            if v is not None:
                return v, kind, self._get(kind, name)
        return None, None, {}

    def per_sample(self, name: str) -> dict | None:
        """The per-sample nats and tokens of `conversation_ppl` or `original_ppl` (paired statistics)."""
        v = self._get(name, "per_sample")
        return v if isinstance(v, dict) else None

    # -- probes and quality ----------------------------------------------------------------------------
    def probe(self, key: str, heldout: bool = False) -> float | None:
        """A knowledge-probe figure: `ll_accuracy`, `answer_contained`, `exact_match`, ...; `heldout` for the
        phrasings training never saw."""
        return self._number("probes", "heldout", key) if heldout else self._number("probes", key)

    def probe_correct(self, heldout: bool = True, kind: str = "ll_correct") -> list[int]:
        """Per question: was the true answer the likeliest (`ll_correct`) or contained in the greedy answer
        (`correct`); the held-out phrasings' by default (paired statistics between two evaluations)."""
        v = self._get("probes", "heldout", kind) if heldout else None
        return list(v) if isinstance(v, list) else []

    def probe_facts(self) -> list:
        """The fact each held-out probe question asks about (the cluster of clustered statistics)."""
        v = self._get("probes", "heldout", "fact")
        return list(v) if isinstance(v, list) else []

    def probe_control(self) -> float | None:
        """The mismatched-subject control's likelihood accuracy (the held-out phrasings about another subject)."""
        return self._number("probes", "heldout", "control", "ll_accuracy")

    def probe_test(self, name: str) -> dict:
        """A clustered comparison of the held-out probe accuracy: `lift` (over the control) or `vs_chance`
        (`difference`, `low`, `high`, `p_value`, `clusters`); {} when not measured."""
        v = self._get("probes", "heldout", name)
        return v if isinstance(v, dict) else {}

    def rouge_l(self) -> float | None:
        return self._number("quality", "rougeL")

    # -- the scalars worth a curve ---------------------------------------------------------------------
    def headline(self) -> dict:
        out = {}
        for key in PERPLEXITIES:
            fig = self.perplexity(key)
            if fig is not None:
                out[f"{key}/all"] = fig.ppl
                out[f"{key}/bits_per_byte"] = fig.bits_per_byte
            assistant = self.perplexity(key, "assistant")
            if assistant is not None:
                out[f"{key}/assistant"] = assistant.ppl
        if self.rouge_l() is not None:
            out["quality/rougeL"] = self.rouge_l()
        if self.probe("ll_accuracy") is not None:
            out["probes/ll_accuracy"] = self.probe("ll_accuracy")
            out["probes/answer_contained"] = self.probe("answer_contained")
        if self.probe("answer_contained", heldout=True) is not None:
            out["probes/heldout_answer_contained"] = self.probe("answer_contained", heldout=True)
            out["probes/heldout_ll_accuracy"] = self.probe("ll_accuracy", heldout=True)
        if self.probe_control() is not None:
            out["probes/control_ll_accuracy"] = self.probe_control()
        for (kind, name), score in self.benchmark_scores().items():
            out[f"{kind}/{name}"] = score
        return {k: v for k, v in out.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def load_evals(run_dir: Path) -> list[EvalRecord]:
    """A run's evaluation records, in step order."""
    files = sorted((Path(run_dir) / "evals").glob("step-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    return [EvalRecord.from_json(json.loads(f.read_text())) for f in files]
