"""Offline twins of the seed models: same architecture class, same tokenizer pipeline family, same chat
format, tiny size, random weights, saved in HF format so they load through `from_pretrained` like hub ids.

The tokenizer is trained here on text every machine has (Python docstrings + the chatterbot corpus) with the
family's own pre-tokenizer, so ids survive a save/reload: when config.json says `model_type: qwen2`,
AutoTokenizer builds a Qwen2Tokenizer, which replaces the normalizer and pre-tokenizer with Qwen2's own
(NFC, then a regex split, then byte-level), so a BPE trained with any other pipeline would give other ids after
a reload.

torch and transformers are imported inside the functions that build a model: the CLI's argument parser
imports ARCHS from here, and `convlearn --help` should not take seconds.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from .data.builtin import chatterbot_dir, stdlib_docstrings
from .templates import CHAT_TEMPLATES

ARCHS = ("qwen2", "llama", "gemma2", "gemma3_text", "phi3")

# Split patterns of the real tokenizers (Qwen2 and Llama-3 differ only in digit grouping).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                  r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Special tokens, and which of them play bos / eos / pad, as in the real tokenizers.
SPECIALS = {
    "qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    "llama": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
               "<|eot_id|>"],
              {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "gemma2": (["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
               {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}),
    "gemma3_text": (["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
                    {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}),
    "phi3": (["<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"],
             {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
              "unk_token": "<unk>"}),
}

# Phi-3's tokenizer marks its role and turn-end tokens rstrip: `<|end|>\n` is one token, and `<|assistant|>`
# swallows the whitespace that starts the content after it.
PHI3_RSTRIP = ("<|assistant|>", "<|user|>", "<|end|>", "<|system|>")

# Tiny shapes of the real architectures: hidden 128, 4 layers, 4 heads, 2 kv heads, ffn 512.
_TINY = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=4096)


def training_corpus(max_chars: int = 1_000_000) -> list[str]:
    """Text to train the tiny tokenizers on: stdlib docstrings plus the chatterbot corpus."""
    texts = [d["text"] for d in stdlib_docstrings(max_chars=max_chars)]
    for path in sorted(chatterbot_dir().glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in data.get("conversations") or []:
            texts.extend(str(turn) for turn in conv if isinstance(turn, (str, int, float)))
    return texts


def train_tokenizer(arch: str, texts: list[str], vocab_size: int = 4096):
    """A `tokenizers.Tokenizer` with the family's normalizer / pre-tokenizer / decoder, trained on texts."""
    specials, roles = SPECIALS[arch]
    if arch in ("qwen2", "llama"):  # byte-level BPE behind a regex split (tiktoken style)
        tok = Tokenizer(models.BPE())
        if arch == "qwen2":
            tok.normalizer = normalizers.NFC()
        pattern = QWEN2_PATTERN if arch == "qwen2" else LLAMA3_PATTERN
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
    else:  # SentencePiece-style BPE: spaces as "▁", byte fallback for unseen characters
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        scheme = "never" if arch.startswith("gemma") else "first"
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256, special_tokens=specials, show_progress=False)
        tok.train_from_iterator(texts, trainer)
        tok = _with_byte_fallback(tok, rstrip=PHI3_RSTRIP if arch == "phi3" else ())
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                        + ([decoders.Strip(" ", 1, 0)] if scheme == "first" else []))
    bos = roles.get("bos_token")
    if bos and arch in ("llama", "gemma2", "gemma3_text"):  # the real ones add BOS when asked for special tokens
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def _with_byte_fallback(tok, rstrip: tuple[str, ...] = ()):
    """Add the 256 `<0xXX>` byte tokens to the BPE vocab and switch byte fallback on, as SentencePiece has; the
    special tokens named in `rstrip` swallow the whitespace after them, as Phi-3's role tokens do."""
    data = json.loads(tok.to_str())
    for added in data["added_tokens"]:
        added["rstrip"] = added["content"] in rstrip
    vocab = data["model"]["vocab"]
    next_id = max(list(vocab.values()) + [t["id"] for t in data["added_tokens"]]) + 1
    for b in range(256):
        key = f"<0x{b:02X}>"
        if key not in vocab:
            vocab[key] = next_id
            next_id += 1
    data["model"]["byte_fallback"] = True
    return Tokenizer.from_str(json.dumps(data))


def tiny_config(arch: str, tokenizer):
    """A transformers config of the real architecture at the tiny shape."""
    from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, Phi3Config, Qwen2Config
    ids = {k.replace("_token", "_token_id"): tokenizer.convert_tokens_to_ids(v)
           for k, v in SPECIALS[arch][1].items() if k != "unk_token"}
    vocab = len(tokenizer)
    if arch == "qwen2":
        return Qwen2Config(vocab_size=vocab, tie_word_embeddings=True, rope_theta=1_000_000.0, **ids, **_TINY)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab, tie_word_embeddings=True, rope_theta=500_000.0, **ids, **_TINY)
    if arch == "gemma2":
        return Gemma2Config(vocab_size=vocab, head_dim=32, query_pre_attn_scalar=32, sliding_window=512,
                            tie_word_embeddings=True, **ids, **_TINY)
    if arch == "gemma3_text":  # five sliding-window layers to one global, as Gemma-3; here 3 + 1
        return Gemma3TextConfig(vocab_size=vocab, head_dim=32, query_pre_attn_scalar=32, sliding_window=512,
                                sliding_window_pattern=4, tie_word_embeddings=True, **ids, **_TINY)
    if arch == "phi3":
        return Phi3Config(vocab_size=vocab, tie_word_embeddings=False, **ids, **_TINY)
    raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")


def build_tiny_model(arch: str, out: str | Path, seed: int = 0, vocab_size: int = 4096,
                     texts: list[str] | None = None) -> Path:
    """Build and save a tiny twin of `arch` in `out`. Deterministic for a given seed and machine."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from .models import quiet_transformers
    quiet_transformers()
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raw = train_tokenizer(arch, texts if texts is not None else training_corpus(), vocab_size)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, **SPECIALS[arch][1])
    tokenizer.chat_template = CHAT_TEMPLATES[arch]
    config = tiny_config(arch, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = getattr(config, "pad_token_id", None)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out
