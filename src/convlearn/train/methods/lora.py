"""LoRA through peft: low-rank adapters on the target Linear modules of a frozen base model."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from ..memory import STEP_BYTES, MemoryCount, weight_bytes
from ..model_folder import base_of
from ..params import lora_adapter_shapes
from . import register
from .base import Method, Trainable, adam_kwargs

if TYPE_CHECKING:
    from ...config import TrainConfig

ADAPTER_FILE = "adapter_model.safetensors"


@register
class LoRA(Method):
    name = "lora"
    summary = "peft LoRA adapters on the attention and MLP projections (the base stays frozen)"
    keys = ("target_modules", "lora_rank", "lora_alpha", "lora_dropout", "save_merged")
    embeddings = ("train",)  # LoRA already freezes every base weight
    adapter = True
    reference = "adapter"

    @property
    def rank(self) -> int:
        return self.cfg.lora_rank

    def build(self, model, train_cfg: TrainConfig, targets, device, seed=0) -> Trainable:
        from peft import LoraConfig, get_peft_model  # heavy (~6 s): only when a LoRA run is built
        m = self.cfg
        lora = LoraConfig(r=m.lora_rank, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                          target_modules=targets, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        if train_cfg.activation_checkpointing:
            model.enable_input_require_grads()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], foreach=False,
                                **adam_kwargs(train_cfg))
        return Trainable(self, model, opt, info={"targets": targets})

    def initial_weights(self, base: str, checkpoint_model: Path | None) -> str:
        return base  # a checkpoint holds the adapter only; `restore` puts it on the base

    def restore(self, trainable: Trainable, checkpoint_model: Path) -> None:
        from peft import set_peft_model_state_dict  # peft: ~6 s to import, only for LoRA runs
        set_peft_model_state_dict(trainable.model, load_file(str(Path(checkpoint_model) / ADAPTER_FILE)))

    def reload(self, trainable: Trainable, checkpoint_model: Path) -> None:
        self.restore(trainable, checkpoint_model)

    def merged(self, trainable: Trainable) -> torch.nn.Module:
        return trainable.model.merge_and_unload()

    def load_trained(self, folder: Path, load_base, base: str) -> torch.nn.Module:
        """The adapter on the base its folder names (the run's own copy of a local base), else `base`."""
        from peft import PeftModel  # peft: ~6 s to import, only for LoRA runs
        recorded = base_of(folder)
        return PeftModel.from_pretrained(load_base(recorded if Path(recorded).exists() else base), str(folder))

    def count_memory(self, model, targets, precision: str = "fp32") -> MemoryCount:
        adapters = lora_adapter_shapes(model, targets, self.cfg.lora_rank)
        adapter_bytes = 4 * sum(a + b for a, b in adapters)  # peft keeps adapters in fp32
        weights = weight_bytes(list(model.parameters()), [], precision)  # the base is frozen
        return MemoryCount(weights + adapter_bytes, adapter_bytes,
                           2 * adapter_bytes + STEP_BYTES * 2 * len(adapters), sum(a + b for a, b in adapters))
