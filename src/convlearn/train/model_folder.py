"""Self-contained model folders: what every checkpoint's `model/`, the run's final model and an export hold.

A folder is usable with nothing else: weights (or a LoRA adapter whose base it names by a path that exists, or a
hub id), config, the tokenizer with its chat template, and a generation config whose eos ids include the family's
end-of-turn token (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `<|end|>`), so `generate` stops where the
assistant's turn ends. `AutoModelForCausalLM` (or `AutoPeftModelForCausalLM`) + `AutoTokenizer` +
`apply_chat_template` + `generate` work on it as they are.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import GenerationConfig

from ..models import end_of_turn_ids as _end_of_turn_ids

ADAPTER_CONFIG = "adapter_config.json"


def end_of_turn_ids(tokenizer, spec) -> list[int]:
    """The eos id and the family's end-of-turn id (`models.end_of_turn_ids` for a registry spec)."""
    return _end_of_turn_ids(tokenizer, spec.facts if spec is not None else None)


def complete(folder: Path, tokenizer, spec, base: str | None = None) -> Path:
    """Add what a saved model (or adapter) folder needs to stand alone: the tokenizer and chat template, the
    generation config with the end-of-turn eos ids, and (an adapter) the base it adapts."""
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    gen_path = folder / "generation_config.json"
    gen = GenerationConfig.from_pretrained(folder) if gen_path.is_file() else GenerationConfig()
    gen.eos_token_id = end_of_turn_ids(tokenizer, spec)
    if tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    gen.save_pretrained(folder)
    adapter = folder / ADAPTER_CONFIG
    if base is not None and adapter.is_file():
        config = json.loads(adapter.read_text())
        config["base_model_name_or_path"] = base
        adapter.write_text(json.dumps(config, indent=2))
    return folder


def is_adapter(folder: Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def base_of(folder: Path) -> str:
    return json.loads((Path(folder) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]


def keep_base(out: Path, name: str) -> str:
    """The base a LoRA run's adapters name: a hub id as it is; a local folder copied into the run (once), so the
    run's adapters load from the run directory alone, wherever the original folder goes."""
    if not Path(name).is_dir():
        return name
    kept = Path(out) / "base"
    if not (kept / "config.json").is_file():
        tmp = kept.with_name(".base-tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(name, tmp)
        tmp.rename(kept)
    return str(kept.resolve())
