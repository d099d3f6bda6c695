"""GaLore with bitsandbytes' 8-bit blockwise Adam (galore_torch.GaLoreAdamW8bit, the reference): CUDA only."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import UserError
from ..memory import MemoryCount, bnb_state, lowrank_shapes, nbytes, weight_bytes
from ..params import embedding_weights, freeze_embeddings, galore_parameters
from . import register
from .base import Method, Trainable, adam_kwargs

if TYPE_CHECKING:
    from ...config import TrainConfig


@register
class GaLore8bit(Method):
    name = "galore8bit"
    summary = "galore_torch's GaLoreAdamW8bit (bitsandbytes 8-bit moments); needs a CUDA GPU"
    keys = ("target_modules", "rank", "update_proj_gap", "scale", "proj_type", "embeddings")
    embeddings = ("train", "project", "freeze")

    @property
    def rank(self) -> int:
        return self.cfg.rank

    def build(self, model, train_cfg: TrainConfig, targets, device, seed=0) -> Trainable:
        if device != "cuda":
            raise UserError("method.name=galore8bit needs a CUDA GPU: bitsandbytes' 8-bit optimizer kernels "
                            "do not run on CPU (use method.name=galore on CPU)")
        from galore_torch import GaLoreAdamW8bit  # imports bitsandbytes (seconds): only when used
        m = self.cfg
        if m.embeddings == "freeze":
            freeze_embeddings(model)
        projected, plain, _ = galore_parameters(model, targets, m.embeddings, m.rank)
        opt = GaLoreAdamW8bit([{"params": plain}, {"params": projected, "rank": m.rank, "scale": m.scale,
                                                    "update_proj_gap": m.update_proj_gap,
                                                    "proj_type": m.proj_type}], **adam_kwargs(train_cfg))
        return Trainable(self, model, opt, info={"reference_optimizer": True})

    def count_memory(self, model, targets, precision: str = "fp32") -> MemoryCount:
        """bitsandbytes' blockwise 8-bit moments (1 byte each, a float32 absmax per 256 elements; fp32 moments
        for tensors under 4096 elements), plus the two shared quantization maps."""
        m = self.cfg
        params = list(model.parameters())
        frozen = {id(w) for w in embedding_weights(model)} if m.embeddings == "freeze" else set()
        trainable = [p for p in params if p.requires_grad and id(p) not in frozen]
        projected, plain, _ = galore_parameters(model, targets, m.embeddings, m.rank)
        state = sum(bnb_state(p.numel()) for p in plain if id(p) not in frozen) + 2 * 256 * 4
        for p in projected:
            low, proj = lowrank_shapes(p.shape, m.rank, m.proj_type)
            state += bnb_state(low) + proj * p.element_size()
        return MemoryCount(weight_bytes(params, trainable, precision), sum(nbytes(p) for p in trainable), state,
                           sum(p.numel() for p in trainable))
