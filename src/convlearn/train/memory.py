"""Exact byte counts of what a training method holds: weights, gradients at their peak, optimizer state.

Counted from parameter shapes and dtypes alone, so a model of the real architecture on the meta device
(`models.meta_model`) is counted with no download and no allocation. Each method counts itself by the rules its
optimizer allocates with (`Method.count_memory` in train/methods/; `methods.count_memory` picks the method);
this module holds the shared rules and the rows of the memory and speed tables. tests/train/test_memory.py checks
every count against the tensors a real training step allocates.

Counts follow `train.precision` (precision.py): the model is built in the weight dtype (float32 for fp32 and
bf16-mixed, bf16 for pure bf16) and gradients and state take their parameter's dtype; bf16-mixed holds frozen
weights in bf16. The bf16 copies autocast makes of fp32 weights for the forward are per-step transients, measured
with the activations (benchmarks/memory.py --activations), not counted here.

Shared rules, per parameter of shape m x n (e = bytes per element of the parameter's dtype):
- weights: every parameter once (a tied embedding is one tensor); frozen ones at 2 bytes in bf16-mixed.
- gradients at peak: all trainable gradients coexist before the optimizer step, except in layer-wise mode:
  per-tensor clipping frees each in its own hook (`layerwise_grad_peak`); global clipping keeps the low-rank
  gradients and the non-projected full ones until the step (`deferred_grad_peak`).
- AdamW (torch, and ours for non-projected weights): two moments of the parameter's shape and dtype, and a
  float32 step counter tensor (`adam_state`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..config import load_config
from .galore import projection_side

STEP_BYTES = 4                 # torch AdamW and our GaLoreAdamW keep `step` as a float32 scalar tensor
BNB_BLOCK, BNB_MIN_8BIT = 256, 4096

# The rows of the memory and speed tables: a label and the config overrides that make the method.
STANDARD_METHODS: dict[str, list[str]] = {
    "adamw": ["method.name=adamw"],
    "adamw layer-wise": ["method.name=adamw", "method.layerwise=true", "method.layerwise_clipping=per_tensor"],
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


def nbytes(p: torch.Tensor) -> int:
    return p.numel() * p.element_size()


def adam_state(p: torch.Tensor) -> int:
    return 2 * nbytes(p) + STEP_BYTES


def lowrank_shapes(shape, rank: int, proj_type: str) -> tuple[int, int]:
    """(elements of the projected gradient, elements of the projector) for one m x n weight."""
    m, n = shape
    r = min(rank, m, n)
    if projection_side(torch.Size(shape), proj_type) == "right":
        return m * r, r * n
    return r * n, m * r


def bnb_state(numel: int) -> int:
    """bitsandbytes Optimizer2State: two uint8 moments + one float32 absmax per block each, or fp32 moments."""
    if numel < BNB_MIN_8BIT:
        return 2 * 4 * numel
    return 2 * numel + 2 * 4 * math.ceil(numel / BNB_BLOCK)


def layerwise_grad_peak(model: torch.nn.Module, trainable: list[torch.Tensor]) -> int:
    """Gradients alive at once when each is freed in its own hook: the largest one, plus a tied embedding's,
    whose two gradients autograd sums in an input buffer that lives from the output head's backward to the
    input embedding's (the end)."""
    emb_in, emb_out = (getattr(m, "weight", None) for m in (model.get_input_embeddings(),
                                                             model.get_output_embeddings()))
    tied = [p for p in trainable if p is emb_in and p is emb_out]
    rest = [nbytes(p) for p in trainable if not any(p is t for t in tied)]
    return sum(nbytes(p) for p in tied) + max(rest, default=0)


def weight_bytes(params: list[torch.Tensor], trainable: list[torch.Tensor], precision: str = "fp32") -> int:
    """Bytes of every weight held: frozen ones in bf16 under bf16-mixed (precision.py, Precision.hold_frozen)."""
    live = {id(p) for p in trainable}
    if precision != "bf16-mixed":
        return sum(nbytes(p) for p in params)
    return sum(nbytes(p) if id(p) in live or p.dtype != torch.float32 else 2 * p.numel() for p in params)


def deferred_grad_peak(model: torch.nn.Module, trainable: list[torch.Tensor], projected: list[torch.Tensor],
                       lowrank_bytes: int) -> int:
    """Layer-wise with global clipping: the low-rank gradients of projected weights and the full gradients of
    the others are kept until the step, and one projected full gradient exists at a time inside its hook. The
    input embedding's gradient arrives last (an untied one that is kept is not there yet while the projected
    weights' hooks run). An upper bound: the largest projected gradient is counted on top of everything else
    kept by then, while its hook may come before some of the others' (autograd's order); tests/train/test_memory.py
    bounds the gap."""
    proj = {id(p) for p in projected}
    kept = sum(nbytes(p) for p in trainable if id(p) not in proj) + lowrank_bytes
    emb_in, emb_out = (getattr(m, "weight", None) for m in (model.get_input_embeddings(),
                                                             model.get_output_embeddings()))
    arrives_last = nbytes(emb_in) if emb_in is not None and emb_in is not emb_out and id(emb_in) not in proj \
        and any(p is emb_in for p in trainable) else 0
    return max(kept, kept - arrives_last + max((nbytes(p) for p in projected), default=0))


def method_config(overrides: list[str]):
    """The MethodConfig for one table row (validated like any run config)."""
    return load_config(None, list(overrides)).method
