"""GaLore (our optimizer, train/galore.py): AdamW whose target 2-D weights keep their moments in a low-rank
projection of the gradient; optionally layer-wise (each weight updated in its own backward hook)."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ...errors import ConfigError, UserError
from ...precision import resolve_precision
from ..galore import GaLoreAdamW
from ..layerwise import LayerwiseUpdater
from ..memory import (
    STEP_BYTES,
    MemoryCount,
    adam_state,
    deferred_grad_peak,
    layerwise_grad_peak,
    lowrank_shapes,
    nbytes,
    weight_bytes,
)
from ..params import embedding_weights, freeze_embeddings, full_rank_targets, galore_parameters
from . import register
from .base import Method, Trainable, adam_kwargs

if TYPE_CHECKING:
    from ...config import TrainConfig


@register
class GaLore(Method):
    name = "galore"
    summary = "GaLore AdamW on the target 2-D weights, AdamW on the rest; layer-wise updates optional"
    keys = ("target_modules", "rank", "update_proj_gap", "scale", "proj_type", "refresh", "randomized_oversample",
            "randomized_iters", "layerwise", "layerwise_accumulation", "layerwise_clipping", "embeddings")
    embeddings = ("train", "project", "freeze")
    layerwise = True

    @property
    def rank(self) -> int:
        return self.cfg.rank

    def check(self, train_cfg: TrainConfig | None = None) -> None:
        super().check(train_cfg)
        m = self.cfg
        if train_cfg is not None and m.layerwise and m.layerwise_clipping == "global" and train_cfg.grad_accum > 1 \
                and m.layerwise_accumulation == "lowrank" and train_cfg.max_grad_norm is not None:
            raise ConfigError("method.layerwise_accumulation", "lowrank accumulation never holds the full "
                              "gradient between projector refreshes, so its global norm cannot clip: use full, "
                              "or method.layerwise_clipping=per_tensor, or train.max_grad_norm=null")

    def build(self, model, train_cfg: TrainConfig, targets, device, seed=0) -> Trainable:
        m = self.cfg
        if m.embeddings == "freeze":
            freeze_embeddings(model)
        projected, plain, names = galore_parameters(model, targets, m.embeddings, m.rank)
        full = full_rank_targets(model, targets, m.rank)
        if full:
            print(f"convlearn: note: method.rank={m.rank} is not below the smaller side of {len(full)} target "
                  f"weight(s) ({', '.join(full[:2])}{', ...' if len(full) > 2 else ''}): they are trained "
                  f"full-rank with AdamW", file=sys.stderr)
        if not projected and not full:
            raise UserError(f"method.target_modules: no Linear weights match {targets}")
        iters = m.randomized_iters if m.randomized_iters is not None else (1 if m.refresh == "warm" else 2)
        opt = GaLoreAdamW([{"params": plain, "galore": False}, {"params": projected, "galore": True}],
                          rank=m.rank, update_proj_gap=m.update_proj_gap, scale=m.scale, proj_type=m.proj_type,
                          refresh=m.refresh, oversample=m.randomized_oversample, iters=iters,
                          seed=seed,
                          stochastic_rounding=resolve_precision(train_cfg.precision, device).mode == "bf16",
                          **adam_kwargs(train_cfg))
        layerwise = LayerwiseUpdater(model, opt, m.layerwise_accumulation, train_cfg.max_grad_norm,
                                     m.layerwise_clipping) if m.layerwise else None
        return Trainable(self, model, opt, layerwise, {"projected": len(names), "targets": targets})

    def count_memory(self, model, targets, precision: str = "fp32") -> MemoryCount:
        """GaLore: the moments live in the projection (max(m, n) x r), plus the projector (min(m, n) x r) in
        the gradient's dtype, and the step tensor; AdamW state for the weights it does not project."""
        m = self.cfg
        params = list(model.parameters())
        frozen = {id(w) for w in embedding_weights(model)} if m.embeddings == "freeze" else set()
        trainable = [p for p in params if p.requires_grad and id(p) not in frozen]
        projected, plain, _ = galore_parameters(model, targets, m.embeddings, m.rank)
        state, lowrank = sum(adam_state(p) for p in plain if id(p) not in frozen), 0  # frozen: never projected
        for p in projected:
            low, proj = lowrank_shapes(p.shape, m.rank, m.proj_type)
            state += (2 * low + proj) * p.element_size() + STEP_BYTES
            lowrank += low * p.element_size()
        if not m.layerwise:
            grads = sum(nbytes(p) for p in trainable)
        elif m.layerwise_clipping == "per_tensor":
            grads = layerwise_grad_peak(model, trainable)
        else:
            grads = deferred_grad_peak(model, trainable, projected, lowrank)
        return MemoryCount(weight_bytes(params, trainable, precision), grads, state,
                           sum(p.numel() for p in trainable))
