"""Full fine-tuning with torch's AdamW: the baseline every other method is measured against. Layer-wise mode is
PyTorch's optimizer-in-backward pattern (one AdamW per parameter, stepped in its gradient's hook)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from ...errors import ConfigError
from ...precision import resolve_precision
from ..galore import GaLoreAdamW
from ..layerwise import LayerwiseUpdater
from ..memory import MemoryCount, adam_state, layerwise_grad_peak, nbytes, weight_bytes
from ..params import embedding_weights, freeze_embeddings
from . import register
from .base import Method, Trainable, adam_kwargs

if TYPE_CHECKING:
    from ...config import TrainConfig


class _States(Mapping):
    """The per-parameter optimizers' states seen as one `optimizer.state` mapping (param -> state)."""

    def __init__(self, inner: dict):
        self.inner = inner

    def __getitem__(self, p):
        return self.inner[id(p)].state[p]

    def __iter__(self):
        return (p for opt in self.inner.values() for p in opt.state)

    def __len__(self):
        return sum(len(opt.state) for opt in self.inner.values())


class PerParameterAdamW(torch.optim.Optimizer):
    """torch AdamW, one instance per parameter, stepped from that parameter's gradient hook; behind one optimizer
    interface: `param_groups` are the instances' own groups (so the lr scheduler sets theirs), one state_dict."""

    def __init__(self, params, fused: bool, **kwargs):
        params = list(params)
        super().__init__(params, dict(kwargs))
        self.inner = {id(p): torch.optim.AdamW([p], foreach=False, fused=fused, **kwargs) for p in params}
        self.param_groups = [opt.param_groups[0] for opt in self.inner.values()]
        self.state = _States(self.inner)

    @torch.no_grad()
    def update(self, p: torch.Tensor, grad: torch.Tensor, group: dict | None = None, low=None) -> None:
        if grad is not p.grad:
            p.grad = grad
        self.inner[id(p)].step()

    def step(self, closure=None):
        for opt in self.inner.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.inner.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"per_parameter": [opt.state_dict() for opt in self.inner.values()]}

    def load_state_dict(self, state_dict):
        for opt, sd in zip(self.inner.values(), state_dict["per_parameter"]):
            opt.load_state_dict(sd)
        self.param_groups = [opt.param_groups[0] for opt in self.inner.values()]  # loading made new dicts


@register
class AdamW(Method):
    name = "adamw"
    summary = "full fine-tuning with torch AdamW (the baseline); layer-wise: one AdamW per parameter in backward"
    keys = ("embeddings", "layerwise", "layerwise_clipping")
    layerwise = True
    reference = "full"  # the baseline (in its plain, not layer-wise, form: verdicts check that too)

    def check(self, train_cfg: TrainConfig | None = None) -> None:
        super().check(train_cfg)
        if self.cfg.layerwise and self.cfg.layerwise_clipping == "global":
            raise ConfigError("method.layerwise_clipping", "layer-wise adamw can only clip per tensor (a global "
                                                            "norm would need every full gradient kept, which is "
                                                            "what layer-wise mode avoids): set per_tensor")

    def build(self, model, train_cfg: TrainConfig, targets, device, seed=0) -> Trainable:
        if self.cfg.embeddings == "freeze":
            freeze_embeddings(model)
        params = [p for p in model.parameters() if p.requires_grad]
        if resolve_precision(train_cfg.precision, device).mode == "bf16":
            # pure bf16: our AdamW update (GaLoreAdamW without projection) with stochastic rounding
            opt = GaLoreAdamW([{"params": params, "galore": False}], seed=seed, stochastic_rounding=True,
                              **adam_kwargs(train_cfg))
        elif self.cfg.layerwise:
            opt = PerParameterAdamW(params, fused=True, **adam_kwargs(train_cfg))
        else:
            # The strongest baseline a user would pick: torch's fused kernel, on CUDA and on CPU alike (on a
            # 2-core CPU its step is 2.3x faster than the default single-tensor loop).
            opt = torch.optim.AdamW(params, fused=True, **adam_kwargs(train_cfg))
        layerwise = LayerwiseUpdater(model, opt, max_grad_norm=train_cfg.max_grad_norm, clipping="per_tensor") \
            if self.cfg.layerwise else None
        return Trainable(self, model, opt, layerwise)

    def count_memory(self, model, targets, precision: str = "fp32") -> MemoryCount:
        params = list(model.parameters())  # each tensor once, tied or not
        frozen = {id(w) for w in embedding_weights(model)} if self.cfg.embeddings == "freeze" else set()
        trainable = [p for p in params if p.requires_grad and id(p) not in frozen]
        grads = layerwise_grad_peak(model, trainable) if self.cfg.layerwise else sum(nbytes(p) for p in trainable)
        return MemoryCount(weight_bytes(params, trainable, precision), grads, sum(adam_state(p) for p in trainable),
                           sum(p.numel() for p in trainable))
