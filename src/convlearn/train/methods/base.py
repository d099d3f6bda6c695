"""What a training method is: one object per method that owns everything the rest of the system asks of it.

A `Method` is bound to the run's `method` config section. It checks its own keys, builds the model wrapper and
optimizer (`Trainable`), saves and restores what it trains, loads a trained folder for inference, merges
adapters, counts its memory, and names itself in tables. The loop, checkpoints, evaluation and reports only
call these; none of them switches on a method's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from safetensors.torch import load_file

from ...errors import ConfigError
from ..layerwise import LayerwiseUpdater
from ..memory import MemoryCount
from ..params import freeze_embeddings

if TYPE_CHECKING:
    from ...config import MethodConfig, TrainConfig


@dataclass
class Trainable:
    """A model ready to train: what forward runs on (peft-wrapped for LoRA), its optimizer, and the layer-wise
    updater when updates happen inside backward."""
    method: "Method"
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    layerwise: LayerwiseUpdater | None = None
    info: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


class Method:
    name: ClassVar[str]
    summary: ClassVar[str] = ""                  # one line for the docs' Methods table
    keys: ClassVar[tuple[str, ...]] = ()         # method.* keys it reads (docs)
    embeddings: ClassVar[tuple[str, ...]] = ("train", "freeze")  # method.embeddings values it supports
    layerwise: ClassVar[bool] = False            # can update inside backward (method.layerwise)
    adapter: ClassVar[bool] = False              # trains an adapter on a frozen base (saves the adapter only)
    # The baseline role it plays in reports, so they pick reference runs by role, not by name: "full" = the
    # full fine-tuning baseline (memory and speed are measured against it), "adapter" = the low-memory
    # baseline; None = a method under test.
    reference: ClassVar[str | None] = None

    def __init__(self, method_cfg: MethodConfig):
        self.cfg = method_cfg

    # -- config ------------------------------------------------------------------------------------------
    def check(self, train_cfg: TrainConfig | None = None) -> None:
        """Raise ConfigError (naming the key) for settings this method cannot honour; with the `train` section,
        also for combinations with it."""
        m = self.cfg
        if m.layerwise and not self.layerwise:
            raise ConfigError("method.layerwise", f"is an option of galore and adamw; method.name is {self.name}")
        if m.embeddings not in self.embeddings:
            raise ConfigError("method.embeddings", f"{m.embeddings} is not an option of {self.name} (its "
                                                   f"options: {', '.join(self.embeddings)})")

    @property
    def rank(self) -> int | None:
        """The rank of its low-rank state or adapter, if it has one (tables, reports)."""
        return None

    @property
    def label(self) -> str:
        """A human name with the settings that tell runs apart: `galore r=128 layer-wise`."""
        parts = [self.name] + ([f"r={self.rank}"] if self.rank is not None else [])
        if self.cfg.layerwise:
            parts.append("layer-wise" + (" per-tensor clip" if self.cfg.layerwise_clipping == "per_tensor" else ""))
        if self.cfg.embeddings != "train":
            parts.append(f"embeddings {self.cfg.embeddings}")
        return " ".join(parts)

    # -- training ----------------------------------------------------------------------------------------
    def build(self, model: torch.nn.Module, train_cfg: TrainConfig, targets: list[str], device: str, seed: int = 0
              ) -> Trainable:
        raise NotImplementedError

    def initial_weights(self, base: str, checkpoint_model: Path | None) -> str:
        """What to load before `build`: the checkpoint's full weights when resuming, else the base model."""
        return str(checkpoint_model) if checkpoint_model is not None else base

    def restore(self, trainable: Trainable, checkpoint_model: Path) -> None:
        """Put what a checkpoint holds back into a freshly built trainable (full weights were already loaded
        by `initial_weights`)."""

    def reload(self, trainable: Trainable, checkpoint_model: Path) -> None:
        """Put a checkpoint's weights back into a live trainable (rolling back after non-finite weights)."""
        state = {}
        for f in sorted(Path(checkpoint_model).glob("*.safetensors")):
            state.update(load_file(str(f)))
        missing, unexpected = trainable.model.load_state_dict(state, strict=False)
        tied = {name for name, p in trainable.model.named_parameters(remove_duplicate=False)} - \
            {name for name, _ in trainable.model.named_parameters()}
        if unexpected or set(missing) - tied - {k for k in missing if k.endswith("lm_head.weight")}:
            raise RuntimeError(f"{checkpoint_model}: weights do not fit the model (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")

    def save(self, trainable: Trainable, path: Path) -> None:
        """What it trains, as a Hugging Face folder (the full model)."""
        trainable.model.save_pretrained(path)

    def merged(self, trainable: Trainable) -> torch.nn.Module:
        """The full model with what was trained folded in."""
        return trainable.model

    def load_trained(self, folder: Path, load_base, base: str) -> torch.nn.Module:
        """A saved folder as a model for inference; `load_base(name_or_path)` loads a full model, `base` is the
        model the run started from. Weights the method does not train are marked so (requires_grad off), as in
        training, so the run's precision holds them as training did (`Precision.hold_frozen`)."""
        model = load_base(str(folder))
        if self.cfg.embeddings == "freeze":
            freeze_embeddings(model)
        return model

    # -- cost --------------------------------------------------------------------------------------------
    def count_memory(self, model: torch.nn.Module, targets, precision: str = "fp32") -> MemoryCount:
        """Bytes of weights, gradients at peak and optimizer state on `model` (built in the weight dtype of
        `precision`)."""
        raise NotImplementedError


def adam_kwargs(train_cfg: TrainConfig) -> dict:
    return dict(lr=train_cfg.lr, betas=tuple(train_cfg.betas), eps=train_cfg.eps,
                weight_decay=train_cfg.weight_decay)
