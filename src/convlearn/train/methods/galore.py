"""GaLore (our optimizer, train/galore.py): AdamW whose target 2-D weights keep their moments in a low-rank
projection of the gradient; optionally layer-wise (each weight updated in its own backward hook)."""
from __future__ import annotations

from ...errors import UserError
from ..galore import GaLoreAdamW
from ..layerwise import LayerwiseUpdater
from ..memory import STEP_BYTES, MemoryCount, adam_state, layerwise_grad_peak, lowrank_shapes, nbytes
from ..params import embedding_weights, freeze_embeddings, galore_parameters
from . import register
from .base import Method, Trainable, adam_kwargs


@register
class GaLore(Method):
    name = "galore"
    summary = "GaLore AdamW on the target 2-D weights, AdamW on the rest; layer-wise updates optional"
    keys = ("target_modules", "rank", "update_proj_gap", "scale", "proj_type", "refresh", "randomized_oversample",
            "randomized_iters", "layerwise", "layerwise_accumulation", "embeddings")
    embeddings = ("train", "project", "freeze")
    layerwise = True

    @property
    def rank(self) -> int:
        return self.cfg.rank

    def build(self, model, train_cfg, targets, device, seed=0) -> Trainable:
        m = self.cfg
        if m.embeddings == "freeze":
            freeze_embeddings(model)
        projected, plain, names = galore_parameters(model, targets, m.embeddings)
        if not projected:
            raise UserError(f"method.target_modules: no Linear weights match {targets}")
        opt = GaLoreAdamW([{"params": plain, "galore": False}, {"params": projected, "galore": True}],
                          rank=m.rank, update_proj_gap=m.update_proj_gap, scale=m.scale, proj_type=m.proj_type,
                          refresh=m.refresh, oversample=m.randomized_oversample, iters=m.randomized_iters,
                          seed=seed, **adam_kwargs(train_cfg))
        layerwise = LayerwiseUpdater(model, opt, m.layerwise_accumulation, train_cfg.max_grad_norm) \
            if m.layerwise else None
        return Trainable(self, model, opt, layerwise, {"projected": len(names), "targets": targets})

    def count_memory(self, model, targets) -> MemoryCount:
        """GaLore: the moments live in the projection (max(m, n) x r), plus the projector (min(m, n) x r) in
        the gradient's dtype, and the step tensor; AdamW state for the weights it does not project."""
        m = self.cfg
        params = list(model.parameters())
        frozen = {id(w) for w in embedding_weights(model)} if m.embeddings == "freeze" else set()
        trainable = [p for p in params if p.requires_grad and id(p) not in frozen]
        grads = layerwise_grad_peak(model, trainable) if m.layerwise else sum(nbytes(p) for p in trainable)
        projected, plain, _ = galore_parameters(model, targets, m.embeddings)
        state = sum(adam_state(p) for p in plain if id(p) not in frozen)  # frozen embeddings: never projected
        for p in projected:
            low, proj = lowrank_shapes(p.shape, m.rank, m.proj_type)
            state += (2 * low + proj) * p.element_size() + STEP_BYTES
        return MemoryCount(sum(nbytes(p) for p in params), grads, state, sum(p.numel() for p in trainable))
