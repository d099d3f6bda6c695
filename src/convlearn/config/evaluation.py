"""Config section of evaluation: what is evaluated when, and the success criteria verdicts are judged by."""
from __future__ import annotations

from typing import Literal, Optional

from ..errors import ConfigError
from .data import SourceConfig
from .schema import opt, section

BENCHMARKS = ("mmlu", "mmlu_continuation", "hellaswag", "arc_challenge", "truthfulqa_mc2", "gsm8k")


@section
class BenchmarkConfig:
    name: Literal["mmlu", "mmlu_continuation", "hellaswag", "arc_challenge", "truthfulqa_mc2", "gsm8k"] = opt(
        doc="lm-evaluation-harness task, by its real name. `mmlu_continuation`: MMLU's data with each choice's "
            "text scored after \"Question: ...\\nAnswer:\" (acc), not its letter: the variant a small base "
            "answers above chance (`data_dir` as for mmlu, e.g. the world-facts copy of "
            "convlearn.data.world_facts).")
    num_fewshot: Optional[int] = opt(None, "Few-shot examples; null = the task's default (the seed: MMLU 5).",
                                     ge=0)
    limit: Optional[int] = opt(None, "At most this many documents (per MMLU subject); null = all.", ge=1)
    data_dir: Optional[str] = opt(None, "Local copy of the task's data in the hub dataset's schema, one file per "
                                        "split (`test.jsonl`, `dev.jsonl`, ... or .json/.parquet); the task "
                                        "definition is generated with absolute paths, same prompts and "
                                        "metrics. null = download from the hub (online only).")


@section
class ScheduleEntry:
    step: int = opt(doc="Optimizer step (0 = before training).", ge=0)
    suite: str = opt(doc="Name of a suite in eval.suites.")


@section
class JudgeConfig:
    base_url: Optional[str] = opt(None, "OpenAI-compatible endpoint (e.g. http://localhost:8000/v1); null = no "
                                        "judge (the quality figures say so).")
    model: str = opt("gpt-4o-mini", "Judge model name at that endpoint.")
    api_key_env: str = opt("OPENAI_API_KEY", "Environment variable holding the API key (may be unset locally).")
    max_pairs: int = opt(50, "Answer pairs judged per evaluation.", ge=1)
    timeout_s: float = opt(60.0, "Seconds per judge request.", gt=0)


@section
class CriteriaConfig:
    conversation_ppl_change: float = opt(-0.15, "Learning: held-out conversation perplexity over assistant tokens "
                                                "falls at least this much (relative) from step 0.", lt=0)
    retention_benchmark: str = opt("mmlu", "The benchmark retention is judged on: an eval.benchmarks name (mmlu "
                                           "counts its quick-eval when the full one did not run).")
    retention_points: float = opt(3.0, "Retention: the retention benchmark stays within this many points of "
                                       "step 0.", gt=0)
    retention_flag_points: float = opt(2.0, "Forgetting flag in forgetting.json: a retention drop above this many "
                                            "points (the seed's Δ < 2%).", ge=0)
    memory_ratio: float = opt(0.5, "Memory: peak memory below this share of AdamW's.", gt=0)
    speed_ratio: float = opt(0.8, "Speed: throughput above this share of AdamW's.", gt=0)
    learning_vs_adamw: float = opt(0.9, "Optimizer hypothesis: GaLore's perplexity gain at least this share of "
                                        "AdamW's.", gt=0)
    memory_vs_lora: float = opt(1.25, "Optimizer hypothesis: GaLore's peak memory at most this multiple of "
                                      "LoRA's.", gt=0)
    scaling_r2: float = opt(0.8, "Data-scaling hypothesis: R² of the log-linear fit.", ge=0, le=1)
    adaptation_steps: int = opt(1000, "Online hypothesis: median steps for an adapted topic to reach "
                                      "adaptation_level of its improvement.", ge=1)
    adaptation_level: float = opt(0.9, "Online hypothesis: the share of a topic's improvement that counts as "
                                       "adapted (must be one of eval.adaptation_levels).", gt=0, le=1)
    confidence: float = opt(0.95, "Confidence of every interval; 1 - confidence is the significance level of "
                                  "every test.", gt=0.5, lt=1)
    bootstrap_samples: int = opt(2000, "Bootstrap resamples of each interval.", ge=100)


@section
class EvalConfig:
    schedule: list[ScheduleEntry] = opt(
        [ScheduleEntry(0, "full"), ScheduleEntry(500, "quick"), ScheduleEntry(1000, "full"),
         ScheduleEntry(2500, "full"), ScheduleEntry(5000, "full")],
        "(step, suite) pairs; the seed's schedule by default. Steps past the run's end are not run.")
    every: int = opt(0, "Also run `every_suite` every N steps (online adaptation curves); 0 = no.", ge=0)
    every_suite: str = opt("quick", "Suite of the periodic evaluations.")
    adaptation_levels: list[float] = opt([0.5, 0.9], "Online: report steps to these shares of a new topic's "
                                                     "eventual held-out improvement.")
    final_suite: Optional[str] = opt("full", "Suite run at the last step when the schedule has none there; "
                                              "null = none.")
    # Items are not checked here: the evaluations are the modules of convlearn/eval/evaluations/ (one file each),
    # which config/ cannot import; eval.evaluations.check_suites names the key when an evaluator or run is built.
    suites: dict[str, list[str]] = opt(
        {"quick": ["conversation_ppl"],
         "full": ["conversation_ppl", "domain_ppl", "original_ppl", "quality", "probes", "benchmarks"]},
        "Named sets of evaluations; see the Evaluations table below. (`mmlu_quick` is not in the default `full`: "
        "it needs a local MMLU copy, an `mmlu` entry of eval.benchmarks with data_dir.)")
    share_step0: bool = opt(False, "Step 0 is the base model: evaluate it once for every run with the same base, "
                                   "eval section, files, precision and held-out samples (a key over all of them, "
                                   "cached in data.cache_dir/step0) and give each run a copy marked `shared_from`. "
                                   "Sweeps whose runs share a base (the real-weights tier) save an evaluation a run.")
    heldout_samples: Optional[int] = opt(1000, "Held-out conversation samples for perplexities; null = all.",
                                         ge=1)
    batch_size: int = opt(8, "Batch size of perplexity and generation passes.", ge=1)
    domain_by: list[str] = opt(["domain", "language", "source"], "Groupings of per-domain perplexity.")
    domain_map: Optional[str] = opt(None, "JSON ({id: domain}) or CSV (conversation_id,domain) file that "
                                          "assigns domains per conversation id (a `mapped` grouping).")
    original: Optional[SourceConfig] = opt(
        SourceConfig(path="allenai/c4", format="text", subset="en", split="validation", limit=1000),
        "Original-distribution text (C4 / RedPajama style) for forgetting perplexity; null = skip.")
    quality_prompts: int = opt(64, "Held-out assistant turns answered greedily for response quality.", ge=1)
    max_new_tokens: int = opt(128, "Token limit of each greedy answer.", ge=1)
    judge: JudgeConfig = opt(JudgeConfig(), "Optional pairwise judge of answers vs the step-0 answers.")
    probes: Optional[str] = opt(None, "JSONL of knowledge probes {question, answer, distractors: [...]}: facts "
                                      "that appear only in the training conversations; null = skip.")
    probe_max_new_tokens: int = opt(32, "Token limit of the greedy answer to each probe question (answer_contained, "
                                        "exact_match); 0: no answers generated, those figures None (the "
                                        "likelihood figures, the evidence, generate nothing).", ge=0)
    benchmarks: list[BenchmarkConfig] = opt(
        [BenchmarkConfig("mmlu", 5), BenchmarkConfig("hellaswag"), BenchmarkConfig("arc_challenge"),
         BenchmarkConfig("truthfulqa_mc2"), BenchmarkConfig("gsm8k")],
        "lm-evaluation-harness benchmarks of the `benchmarks` evaluation.")
    lm_eval_batch_size: int = opt(8, "lm-eval batch size.", ge=1)
    lm_eval_max_length: Optional[int] = opt(
        None, "lm-eval context length; null = the model's own (max_position_embeddings).", ge=16)
    apply_chat_template: bool = opt(False, "lm-eval: wrap prompts in the model's chat template.")
    fewshot_as_multiturn: bool = opt(False, "lm-eval: few-shot examples as chat turns (needs the template).")
    mmlu_quick_per_subject: int = opt(10, "MMLU quick-eval: questions per subject (fixed, seeded subset).", ge=1)
    criteria: CriteriaConfig = opt(CriteriaConfig(), "The research plan's success criteria and each "
                                                     "experiment's hypothesis thresholds (the report reads them "
                                                     "from here; nothing is hard-coded).")

    def validate(self, path: str) -> None:
        for i, entry in enumerate(self.schedule):
            if entry.suite not in self.suites:
                raise ConfigError(f"{path}.schedule[{i}].suite", f"unknown suite {entry.suite!r} "
                                                                 f"(suites: {', '.join(self.suites)})")
        if self.every and self.every_suite not in self.suites:
            raise ConfigError(f"{path}.every_suite", f"unknown suite {self.every_suite!r}")
        if self.final_suite is not None and self.final_suite not in self.suites:
            raise ConfigError(f"{path}.final_suite", f"unknown suite {self.final_suite!r}")
        if self.fewshot_as_multiturn and not self.apply_chat_template:
            raise ConfigError(f"{path}.fewshot_as_multiturn", "needs eval.apply_chat_template: true")


