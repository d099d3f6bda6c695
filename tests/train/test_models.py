import hashlib
import subprocess
import sys

import pytest
import torch

from convlearn.models import REGISTRY, load_model, load_tokenizer, model_spec
from convlearn.precision import resolve_precision
from convlearn.tiny import build_tiny_model
from helpers import ARCHS


def test_registry_holds_the_seed_models():
    assert set(REGISTRY) == {"Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct",
                             "meta-llama/Llama-3.2-1B-Instruct", "google/gemma-2-2b-it",
                             "microsoft/Phi-3.5-mini-instruct", "google/gemma-3-270m"}
    gemma = REGISTRY["google/gemma-2-2b-it"]
    assert gemma.family == "gemma2" and not gemma.facts.system_role and gemma.facts.attn_implementation == "eager"
    assert REGISTRY["microsoft/Phi-3.5-mini-instruct"].facts.target_modules == (
        "qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    assert "q_proj" in REGISTRY["Qwen/Qwen2.5-1.5B-Instruct"].facts.target_modules
    # weights load in float32 on CPU; on a GPU in fp32 masters computed in bf16 (precision.py)
    cpu, gpu = resolve_precision("auto", "cpu"), resolve_precision("auto", "cuda")
    assert cpu.weight_dtype == torch.float32 and cpu.weight_dtype_name == "float32"
    assert gpu.mode == "bf16-mixed" and gpu.weight_dtype == torch.float32 and gpu.frozen_dtype == torch.bfloat16


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_twins_load_through_from_pretrained(tiny_models, tokenizers, arch):
    path = str(tiny_models[arch])
    spec = model_spec(path)
    assert spec.family == arch
    model = load_model(path)
    assert model.config.model_type == arch
    assert model.config._attn_implementation == ("eager" if arch == "gemma2" else "sdpa")
    assert next(model.parameters()).dtype == torch.float32
    tok = tokenizers[arch]
    ids = tok("Hello wörld 123", return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss) and out.logits.shape[-1] == model.config.vocab_size
    gen = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 3


@pytest.mark.parametrize("arch", ARCHS)
def test_tokenizer_ids_survive_reload(tiny_models, tokenizers, corpus, arch):
    """The saved folder reloads (through the family's tokenizer class) to the ids training produced."""
    from convlearn.tiny import train_tokenizer
    raw = train_tokenizer(arch, corpus)
    text = "def f(x):\n    return x ** 2  # naïve café 😀, 12345 tokens\n\n\tEnd."
    assert tokenizers[arch](text, add_special_tokens=False)["input_ids"] == raw.encode(
        text, add_special_tokens=False).ids
    assert tokenizers[arch].decode(raw.encode(text, add_special_tokens=False).ids) == text


def _digest(folder):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


@pytest.mark.slow
def test_tiny_model_cli_is_deterministic(tmp_path):
    for name in ("a", "b"):
        res = subprocess.run([sys.executable, "-m", "convlearn", "tiny-model", "--arch", "phi3", "--out",
                              str(tmp_path / name)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(
        _digest(tmp_path / "a"))
    other = build_tiny_model("phi3", tmp_path / "c", seed=1)
    assert _digest(other)["model.safetensors"] != _digest(tmp_path / "a")["model.safetensors"]
    assert _digest(other)["tokenizer.json"] == _digest(tmp_path / "a")["tokenizer.json"]


def test_unknown_local_model_is_a_clear_error(tmp_path):
    from convlearn.errors import UserError
    with pytest.raises(UserError, match="cannot load tokenizer"):
        load_tokenizer(str(tmp_path / "nothing-here"))
