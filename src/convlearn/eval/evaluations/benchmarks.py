"""lm-evaluation-harness on the live model (eval/benchmarks.py): every configured benchmark, or MMLU's quick
subset. The evaluator builds one `Benchmarks` and both share it (task definitions are written once)."""
from __future__ import annotations

from ...errors import UserError
from . import register_evaluation
from .base import EvalContext, Evaluation


@register_evaluation
class LmEvalBenchmarks(Evaluation):
    name = "benchmarks"
    summary = "every `eval.benchmarks` entry through lm-evaluation-harness (local copies offline)"

    def check_offline(self, ecfg) -> None:
        for i, b in enumerate(ecfg.benchmarks):
            if not b.data_dir:
                raise UserError(f"eval.benchmarks[{i}].data_dir: the hub is offline, so {b.name} needs a "
                                "local copy of its data (or drop `benchmarks` from eval.suites)")

    def run(self, ctx: EvalContext, model) -> dict:
        return ctx.benchmarks().run(model, ctx.tokenizer, quick_mmlu=False)


@register_evaluation
class MmluQuick(Evaluation):
    name = "mmlu_quick"
    summary = "a fixed, seeded subset of MMLU (`eval.mmlu_quick_per_subject` questions per subject)"

    def check(self, ecfg) -> str | None:
        if not any(b.name == "mmlu" and b.data_dir for b in ecfg.benchmarks):
            return ("needs an `mmlu` entry with data_dir in eval.benchmarks (its subset is drawn from a local MMLU "
                    "copy); give one, or take mmlu_quick out of the suite")
        return None

    def run(self, ctx: EvalContext, model) -> dict:
        return ctx.benchmarks().run(model, ctx.tokenizer, quick_mmlu=True)
