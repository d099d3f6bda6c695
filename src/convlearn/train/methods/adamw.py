"""Full fine-tuning with torch's AdamW: the baseline every other method is measured against."""
from __future__ import annotations

import torch

from ..memory import MemoryCount, adam_state, nbytes
from ..params import embedding_weights, freeze_embeddings
from . import register
from .base import Method, Trainable, adam_kwargs


@register
class AdamW(Method):
    name = "adamw"
    summary = "full fine-tuning with torch AdamW (the baseline)"
    keys = ("embeddings",)

    def build(self, model, train_cfg, targets, device, seed=0) -> Trainable:
        if self.cfg.embeddings == "freeze":
            freeze_embeddings(model)
        # The strongest baseline on each device: torch's fused kernel on CUDA (fastest, no transient copies);
        # the single-tensor loop on CPU (no transient copies; what the tests' exact losses were taken with).
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], foreach=False,
                                fused=device == "cuda", **adam_kwargs(train_cfg))
        return Trainable(self, model, opt)

    def count_memory(self, model, targets) -> MemoryCount:
        params = list(model.parameters())  # each tensor once, tied or not
        frozen = {id(w) for w in embedding_weights(model)} if self.cfg.embeddings == "freeze" else set()
        trainable = [p for p in params if p.requires_grad and id(p) not in frozen]
        return MemoryCount(sum(nbytes(p) for p in params), sum(nbytes(p) for p in trainable),
                           sum(adam_state(p) for p in trainable), sum(p.numel() for p in trainable))
