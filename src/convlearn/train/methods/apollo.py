"""APOLLO and APOLLO-Mini through the optional apollo-torch package (CC-BY-NC: never a required dependency)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import UserError
from ..memory import MemoryCount, lowrank_shapes, nbytes, weight_bytes
from ..params import embedding_weights, freeze_embeddings, galore_parameters
from . import register
from .base import Method, Trainable, adam_kwargs

if TYPE_CHECKING:
    from ...config import TrainConfig


def _apollo_optimizer():
    try:
        from apollo_torch import APOLLOAdamW  # optional extra
    except ImportError:
        return None
    return APOLLOAdamW


@register
class Apollo(Method):
    name = "apollo"
    summary = "APOLLO (apollo-torch, optional extra, CC-BY-NC): channel-wise scaling from a random projection"
    keys = ("target_modules", "rank", "update_proj_gap", "apollo_scale", "embeddings")
    mini = False

    @property
    def rank(self) -> int:
        return 1 if self.mini else self.cfg.rank

    def build(self, model, train_cfg: TrainConfig, targets, device, seed=0) -> Trainable:
        opt_cls = _apollo_optimizer()
        if opt_cls is None:
            raise UserError(f"method.name={self.name} needs the optional apollo-torch package, which is licensed "
                            "CC-BY-NC (non-commercial use only): pip install 'convlearn[apollo]'")
        if self.cfg.embeddings == "freeze":
            freeze_embeddings(model)
        projected, plain, _ = galore_parameters(model, targets, rank=self.rank)
        opt = opt_cls([{"params": plain}, {
            "params": projected, "rank": self.rank, "proj": "random",
            "scale_type": "tensor" if self.mini else "channel", "scale": 128 if self.mini else self.cfg.apollo_scale,
            "update_proj_gap": self.cfg.update_proj_gap, "proj_type": "std"}], **adam_kwargs(train_cfg))
        return Trainable(self, model, opt, info={"reference_optimizer": True})

    def count_memory(self, model, targets, precision: str = "fp32") -> MemoryCount:
        """Adam moments in the rank-r projection plus the projector; APOLLO's step counters are Python ints."""
        params = list(model.parameters())
        frozen = {id(w) for w in embedding_weights(model)} if self.cfg.embeddings == "freeze" else set()
        trainable = [p for p in params if p.requires_grad and id(p) not in frozen]
        projected, plain, _ = galore_parameters(model, targets, rank=self.rank)
        state = sum(2 * nbytes(p) for p in plain if id(p) not in frozen)
        for p in projected:
            low, proj = lowrank_shapes(p.shape, self.rank, "std")
            state += (2 * low + proj) * p.element_size()
        return MemoryCount(weight_bytes(params, trainable, precision), sum(nbytes(p) for p in trainable), state,
                           sum(p.numel() for p in trainable))


@register
class ApolloMini(Apollo):
    name = "apollo_mini"
    summary = "APOLLO-Mini (rank 1, tensor-wise scaling; optional extra, CC-BY-NC)"
    keys = ("target_modules", "update_proj_gap", "embeddings")
    mini = True
