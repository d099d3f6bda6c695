"""Exact byte counts of what each training method holds: weights, gradients at their peak, optimizer state.

Counted from parameter shapes and dtypes alone, so a model of the real architecture on the meta device
(`models.meta_model`) is counted with no download and no allocation, by the rules each optimizer allocates
with. tests/test_memory.py checks every count against the tensors a real training step allocates (our
optimizers, torch AdamW, peft LoRA); galore8bit (bitsandbytes) and APOLLO follow their libraries' allocation
code and run only on a GPU / with the optional extra.

Rules, per parameter of shape m x n (e = bytes per element of the parameter's dtype):
- weights: every parameter once (a tied embedding is one tensor), plus LoRA's adapters, which peft keeps in
  fp32 even on a bf16 model.
- gradients at peak: all trainable gradients coexist before the optimizer step, except layer-wise GaLore,
  where each is freed in its own hook: the largest one, plus a tied embedding's, whose two gradients autograd
  sums in an input buffer that lives from the output head's backward to the input embedding's (the end).
- AdamW (torch, and ours for non-projected weights): two moments of the parameter's shape and dtype, and a
  float32 step counter tensor. GaLore: the moments live in the projection (max(m, n) x r), plus the projector
  (min(m, n) x r) in the gradient's dtype, and the step tensor. galore8bit: bitsandbytes' blockwise 8-bit
  moments (1 byte each, a float32 absmax per 256 elements; fp32 moments for tensors under 4096 elements).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .galore import projection_side
from .methods import embedding_weights, galore_parameters

STEP_BYTES = 4                 # torch AdamW and our GaLoreAdamW keep `step` as a float32 scalar tensor
BNB_BLOCK, BNB_MIN_8BIT = 256, 4096

# The rows of the memory and speed tables: a label and the config overrides that make the method.
STANDARD_METHODS: dict[str, list[str]] = {
    "adamw": ["method.name=adamw"],
    "lora r=64": ["method.name=lora", "method.lora_rank=64", "method.lora_alpha=128"],
    "galore r=256": ["method.name=galore", "method.rank=256"],
    "galore r=128": ["method.name=galore", "method.rank=128"],
    "galore r=128 layer-wise": ["method.name=galore", "method.rank=128", "method.layerwise=true"],
    "galore8bit r=128": ["method.name=galore8bit", "method.rank=128"],
    "apollo r=256": ["method.name=apollo", "method.rank=256"],
    "apollo-mini": ["method.name=apollo_mini"],
}
# The levers for the last part of the state (the embedding matrices), on top of layer-wise GaLore r=128.
LEVERS: dict[str, list[str]] = {
    "layer-wise r=128 + embeddings projected": STANDARD_METHODS["galore r=128 layer-wise"] + [
        "method.embeddings=project"],
    "layer-wise r=128 + embeddings frozen": STANDARD_METHODS["galore r=128 layer-wise"] + [
        "method.embeddings=freeze"],
    "galore8bit r=128 + embeddings projected": STANDARD_METHODS["galore8bit r=128"] + [
        "method.embeddings=project"],
}


@dataclass(frozen=True)
class MemoryCount:
    weights: int           # bytes of every weight held (frozen ones too)
    grads: int             # bytes of gradients alive at their peak
    state: int             # bytes of optimizer state, projectors included
    trainable_params: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.state

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def _nbytes(p: torch.Tensor) -> int:
    return p.numel() * p.element_size()


def _adam_state(p: torch.Tensor) -> int:
    return 2 * _nbytes(p) + STEP_BYTES


def _lowrank_shapes(shape, rank: int, proj_type: str) -> tuple[int, int]:
    """(elements of the projected gradient, elements of the projector) for one m x n weight."""
    m, n = shape
    r = min(rank, m, n)
    if projection_side(torch.Size(shape), proj_type) == "right":
        return m * r, r * n
    return r * n, m * r


def _bnb_state(numel: int) -> int:
    """bitsandbytes Optimizer2State: two uint8 moments + one float32 absmax per block each, or fp32 moments."""
    if numel < BNB_MIN_8BIT:
        return 2 * 4 * numel
    return 2 * numel + 2 * 4 * math.ceil(numel / BNB_BLOCK)


def _lora_adapters(model: torch.nn.Module, targets, rank: int) -> list[tuple[int, int]]:
    from .methods import _matches
    return [(rank * mod.in_features, mod.out_features * rank) for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and _matches(name, targets)]


def count_memory(model: torch.nn.Module, method, targets) -> MemoryCount:
    """Weights, gradients at peak and optimizer state of `method` (a MethodConfig) on `model`, in bytes."""
    params = list(model.parameters())  # each tensor once, tied or not
    weights = sum(_nbytes(p) for p in params)
    if method.name == "lora":
        adapters = _lora_adapters(model, targets, method.lora_rank)
        adapter_bytes = 4 * sum(a + b for a, b in adapters)  # peft keeps adapters in fp32
        return MemoryCount(weights + adapter_bytes, adapter_bytes,
                           2 * adapter_bytes + STEP_BYTES * 2 * len(adapters), sum(a + b for a, b in adapters))
    frozen = {id(w) for w in embedding_weights(model)} if method.embeddings == "freeze" else set()
    trainable = [p for p in params if p.requires_grad and id(p) not in frozen]
    grads = sum(_nbytes(p) for p in trainable)
    if method.name == "galore" and method.layerwise:
        emb_in, emb_out = (getattr(m, "weight", None) for m in (model.get_input_embeddings(),
                                                                 model.get_output_embeddings()))
        tied = [p for p in trainable if p is emb_in and p is emb_out]
        rest = [_nbytes(p) for p in trainable if not any(p is t for t in tied)]
        grads = sum(_nbytes(p) for p in tied) + max(rest, default=0)
    if method.name == "adamw":
        state = sum(_adam_state(p) for p in trainable)
    else:
        projected, plain, _ = galore_parameters(model, targets, method.embeddings)
        plain = [p for p in plain if id(p) not in frozen]  # frozen embeddings are never projected
        if method.name in ("apollo", "apollo_mini"):
            rank = 1 if method.name == "apollo_mini" else method.rank
            state = sum(2 * _nbytes(p) for p in plain)  # APOLLO's step counters are Python ints
            for p in projected:
                low, proj = _lowrank_shapes(p.shape, rank, "std")
                state += (2 * low + proj) * p.element_size()
        elif method.name == "galore8bit":
            state = sum(_bnb_state(p.numel()) for p in plain) + 2 * 256 * 4  # + the two shared qmaps
            for p in projected:
                low, proj = _lowrank_shapes(p.shape, method.rank, method.proj_type)
                state += _bnb_state(low) + proj * p.element_size()
        elif method.name == "galore":
            state = sum(_adam_state(p) for p in plain)
            for p in projected:
                low, proj = _lowrank_shapes(p.shape, method.rank, method.proj_type)
                state += (2 * low + proj) * p.element_size() + STEP_BYTES
        else:
            raise ValueError(f"no memory rule for method {method.name!r}")
    return MemoryCount(weights, grads, state, sum(p.numel() for p in trainable))


def method_config(overrides: list[str]):
    """The MethodConfig for one table row (validated like any run config)."""
    from ..config import load_config
    return load_config(None, list(overrides)).method
