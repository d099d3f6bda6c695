"""The memory accounting (train/memory.py) against the tensors a real training step allocates."""
import weakref

import pytest
import torch

from convlearn.config import load_config
from convlearn.models import FAMILIES, REGISTRY, ModelSpec, load_model, meta_model
from convlearn.train.batches import token_losses
from convlearn.train.galore import state_bytes
from convlearn.train.methods import build_method, count_memory
from convlearn.train.params import embedding_weights

ROWS = {
    "adamw": ["method.name=adamw"],
    "lora": ["method.name=lora", "method.lora_rank=8", "method.lora_alpha=16"],
    "galore": ["method.name=galore", "method.rank=16"],
    "galore right": ["method.name=galore", "method.rank=100", "method.proj_type=right"],
    "galore rank above a side": ["method.name=galore", "method.rank=200"],
    "layer-wise": ["method.name=galore", "method.rank=16", "method.layerwise=true"],
    "layer-wise per-tensor": ["method.name=galore", "method.rank=16", "method.layerwise=true",
                              "method.layerwise_clipping=per_tensor"],
    "adamw layer-wise": ["method.name=adamw", "method.layerwise=true", "method.layerwise_clipping=per_tensor"],
    "layer-wise project": ["method.name=galore", "method.rank=16", "method.layerwise=true",
                           "method.embeddings=project"],
    "layer-wise freeze": ["method.name=galore", "method.rank=16", "method.layerwise=true",
                          "method.embeddings=freeze"],
    "adamw freeze": ["method.name=adamw", "method.embeddings=freeze"],
}
# Published parameter counts of the seed models: the registry's architecture facts give the real shapes.
PUBLISHED = {"Qwen/Qwen2.5-0.5B-Instruct": 494_032_768, "Qwen/Qwen2.5-1.5B-Instruct": 1_543_714_304,
             "meta-llama/Llama-3.2-1B-Instruct": 1_235_814_400, "google/gemma-2-2b-it": 2_614_341_888,
             "microsoft/Phi-3.5-mini-instruct": 3_821_079_552, "google/gemma-3-270m": 268_098_176}


def test_meta_models_have_the_published_parameter_counts():
    for name, n in PUBLISHED.items():
        model = meta_model(name)
        assert sum(p.numel() for p in model.parameters()) == n, name
        assert all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in model.parameters())


class LiveGrads:
    """Measures the peak bytes of live gradients: a hook (registered before the optimizer's) sees each `.grad` as
    it is set, and a weakref finalizer sees it freed; `watch(updater)` adds the low-rank gradients a layer-wise
    updater keeps, looked at before and after its hook."""

    def __init__(self, params, skip=None):
        self.live = self.peak = 0
        self.params = [p for p in params if p is not skip]
        self.updater = None
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._seen)

    def watch(self, updater):
        self.updater = updater
        for p in self.params:
            if p.requires_grad:  # the method may have frozen some
                p.register_post_accumulate_grad_hook(lambda p: self._note())

    def _kept(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.updater.low.values()) if self.updater else 0

    def _note(self):
        self.peak = max(self.peak, self.live + self._kept())

    def _seen(self, p):
        n = p.grad.numel() * p.grad.element_size()
        self.live += n
        self._note()
        weakref.finalize(p.grad, self._freed, n)

    def _freed(self, n):
        self.live -= n


def real_step(model, overrides, spec, seq=24):
    """One training step exactly as the loop makes it; returns (method, measured grad peak)."""
    cfg = load_config(None, overrides + ["train.lr=1e-3"])
    # A tied embedding's gradient is measured apart: autograd holds it (in an input buffer, where no hook
    # sees it) from the output head's backward to the end, so it adds to whatever else is alive.
    live = LiveGrads([p for p in model.parameters() if p.requires_grad], skip=tied_param(model))
    method = build_method(model, cfg, spec, "cpu")
    if method.layerwise is not None:
        live.watch(method.layerwise)
    ids = torch.randint(0, model.config.vocab_size, (2, seq), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": torch.ones_like(ids).bool()}
    if method.layerwise is not None:
        method.layerwise.begin_step(1)
    s, n = token_losses(method.model, batch)
    (s / n).backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in method.trainable if p.grad is not None)
    if method.layerwise is None:
        method.optimizer.step()
    else:
        method.layerwise.finish_step()
    method.optimizer.zero_grad(set_to_none=True)
    return method, cfg, (live.peak if method.layerwise is not None else grads)


def tied_param(model):
    e_in, e_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    return e_in if e_in is e_out and e_in.requires_grad else None


def tied_bytes(model):
    p = tied_param(model)
    return 0 if p is None else p.numel() * p.element_size()


def check_counts(model_factory, spec, rows=ROWS):
    for row, overrides in rows.items():
        model = model_factory()
        method, cfg, grads = real_step(model, overrides, spec)
        targets = cfg.method.target_modules or list(spec.facts.target_modules)
        count = count_memory(model_factory(), cfg.method, targets)
        weights = sum(p.numel() * p.element_size() for p in method.model.parameters())
        assert count.weights == weights, row
        assert count.state == state_bytes(method.optimizer), row
        assert count.trainable_params == sum(p.numel() for p in method.trainable), row
        if method.layerwise is not None and cfg.method.layerwise_clipping == "global":
            # an upper bound by at most the low-rank gradients of the weights autograd visits after the largest
            measured = grads + tied_bytes(model)
            assert measured <= count.grads <= 1.1 * measured, (row, measured, count.grads)
        elif method.layerwise is not None:
            assert count.grads == grads + tied_bytes(model), row
        else:
            assert count.grads == grads, row


@pytest.mark.parametrize("arch", ["qwen2", "phi3"])
def test_counts_equal_a_real_step_on_the_tiny_twins(tiny_models, arch):
    spec = ModelSpec("tiny", FAMILIES[arch])
    torch.manual_seed(0)
    check_counts(lambda: load_model(str(tiny_models[arch]), device="cpu"), spec)


def test_counts_equal_a_real_step_on_a_34m_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    config = Qwen2Config(hidden_size=512, intermediate_size=2816, num_hidden_layers=6, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=8192, tie_word_embeddings=True)
    spec = ModelSpec("bench", FAMILIES["qwen2"])
    rows = {k: ROWS[k] for k in ("adamw", "lora", "layer-wise", "layer-wise freeze")}
    rows["galore r=128"] = ["method.name=galore", "method.rank=128"]

    def build():
        torch.manual_seed(0)
        return Qwen2ForCausalLM(config)
    check_counts(build, spec, rows)


def test_frozen_embeddings_get_no_gradient_and_no_state(tiny_models):
    spec = ModelSpec("tiny", FAMILIES["qwen2"])
    model = load_model(str(tiny_models["qwen2"]), device="cpu")
    before = [w.detach().clone() for w in embedding_weights(model)]
    method, _, _ = real_step(model, ROWS["layer-wise freeze"], spec)
    assert all(not w.requires_grad and w not in method.optimizer.state for w in embedding_weights(model))
    assert all(torch.equal(a, w) for a, w in zip(before, embedding_weights(model)))


def test_the_levers_reach_their_ratios_at_qwen25_15b_shape():
    """The table's headline, recomputed in the precision a GPU trains with (bf16-mixed: fp32 master weights,
    gradients and state): at Qwen2.5-1.5B's shape layer-wise GaLore r=128 holds 43% of AdamW's training state
    (41% with per-tensor clipping), projecting the embeddings takes it to 36%, freezing them to <= 30%; against
    layer-wise AdamW (which frees gradients the same way) GaLore's own saving is 0.54."""
    from convlearn.train.memory import LEVERS, STANDARD_METHODS, method_config
    name = "Qwen/Qwen2.5-1.5B-Instruct"
    model, targets = meta_model(name, dtype=torch.float32), list(REGISTRY[name].facts.target_modules)

    def total(overrides, precision="bf16-mixed"):
        return count_memory(model, method_config(overrides), targets, precision).total
    base = total(STANDARD_METHODS["adamw"])
    assert base == 16 * 1_543_714_304 + 4 * 338  # 16 bytes per parameter + a step tensor per parameter tensor
    layerwise = total(STANDARD_METHODS["galore r=128 layer-wise"])
    assert round(layerwise / base, 2) == 0.43
    assert round(total(STANDARD_METHODS["galore r=128 layer-wise"] + ["method.layerwise_clipping=per_tensor"])
                 / base, 2) == 0.41
    assert round(total(LEVERS["layer-wise r=128 + embeddings projected"]) / base, 2) == 0.36
    assert total(LEVERS["layer-wise r=128 + embeddings frozen"]) / base <= 0.30
    adamw_lw = total(["method.name=adamw", "method.layerwise=true", "method.layerwise_clipping=per_tensor"])
    assert round(layerwise / adamw_lw, 2) == 0.54


def test_embedding_choices_that_make_no_sense_name_the_key():
    from convlearn.errors import ConfigError
    from convlearn.train.methods import method_for
    for bad in (["method.name=adamw", "method.embeddings=project"],
                ["method.name=lora", "method.embeddings=freeze"]):
        with pytest.raises(ConfigError) as e:
            method_for(load_config(None, bad).method)
        assert e.value.path == "method.embeddings"


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma2", "gemma3_text", "phi3"])
def test_chunked_loss_equals_the_whole_loss_and_its_gradients(tiny_models, arch):
    """train.loss_chunk_tokens: same loss and same gradients (the head's included), whatever the chunk size;
    Gemma-2's logit softcapping is applied in the chunks too."""
    from convlearn.train.batches import token_losses
    model = load_model(str(tiny_models[arch]), device="cpu")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, 20), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "loss_mask": torch.rand(3, 20, generator=g) > 0.3}
    results = []
    for chunk in (0, 7):
        model.zero_grad(set_to_none=True)
        s, n = token_losses(model, batch, chunk_tokens=chunk)
        s.backward()
        results.append((float(s.detach()), n, {k: p.grad.clone() for k, p in model.named_parameters()}))
    (whole, n0, g0), (chunked, n1, g1) = results
    assert n0 == n1 == int(batch["loss_mask"][:, 1:].sum())
    assert chunked == pytest.approx(whole, rel=1e-5)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-5)
