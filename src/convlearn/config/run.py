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
                        "file or folder, `chatterbot` for the corpus the chatterbot-corpus package ships, a "
                        "local dataset folder, or a Hugging Face dataset id (read with `datasets`, streaming).")
    format: Format = opt("auto", "Record format; auto detects it from the first records.")
    split: str = opt("train", "Split to read from a hub dataset or dataset folder.")
    subset: Optional[str] = opt(None, "Dataset config name of a hub dataset (the `name` of load_dataset).")
    limit: Optional[int] = opt(None, "Read at most this many raw rows of this source; null = all.", ge=1)
    domain: Optional[str] = opt(None, "Domain label for every record of this source, replacing the "
                                      "source's own topic; null = the source's topic, else its name.")
    oasst_best_path_only: bool = opt(False, "OpenAssistant: keep only the best-ranked root-to-leaf path per "
                                            "tree instead of every path that ends with an assistant message.")


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


@section
class RunConfig:
    model: ModelConfig = opt(ModelConfig(), "The model to train.")
    data: DataConfig = opt(DataConfig(), "Training data.")
    render: RenderConfig = opt(RenderConfig(), "How conversations become token ids and loss masks.")
    seed: int = opt(0, "Seed for data order and initialisation.", ge=0)
    output_dir: str = opt("runs/default", "Run directory: resolved config, metrics, evals, checkpoints.")


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
