"""Build the model wrapper and optimizer for each method, behind one small interface the loop uses."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from .galore import GaLoreAdamW
from .layerwise import LayerwiseUpdater


@dataclass
class Method:
    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    layerwise: LayerwiseUpdater | None = None
    info: dict = field(default_factory=dict)

    @property
    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def save_model(self, path: Path) -> None:
        """HF folder: the full model, or the peft adapter for LoRA."""
        self.model.save_pretrained(path)


def _matches(name: str, targets: list[str] | tuple[str, ...]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def embedding_weights(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The input embedding and the output head (one tensor when tied)."""
    found = []
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        w = getattr(module, "weight", None)
        if w is not None and not any(w is f for f in found):
            found.append(w)
    return found


def galore_parameters(model: torch.nn.Module, targets, embeddings: str = "train") -> tuple[list, list, list[str]]:
    """(projected, plain, projected names): 2-D weights of the target Linear modules are projected, and the
    embedding matrices too with embeddings="project"."""
    projected, names, seen = [], [], set()
    for mod_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and _matches(mod_name, targets) and module.weight.requires_grad:
            projected.append(module.weight)
            names.append(mod_name + ".weight")
            seen.add(id(module.weight))
    if embeddings == "project":
        named = {id(p): n for n, p in model.named_parameters()}
        for w in embedding_weights(model):
            if w.requires_grad and id(w) not in seen:
                projected.append(w)
                names.append(named[id(w)])
                seen.add(id(w))
    plain = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    return projected, plain, names


def freeze_embeddings(model: torch.nn.Module) -> None:
    """`method.embeddings=freeze`: the embedding matrices get no gradient and no optimizer state."""
    for w in embedding_weights(model):
        w.requires_grad_(False)


def build_method(model: torch.nn.Module, cfg, spec, device: str, seed: int = 0) -> Method:
    m, t = cfg.method, cfg.train
    targets = m.target_modules or list(spec.facts.target_modules)
    adam = dict(lr=t.lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay)
    if m.embeddings == "freeze":  # the config refuses it for LoRA, which freezes every base weight anyway
        freeze_embeddings(model)
    if m.name == "adamw":
        # The strongest baseline on each device: torch's fused kernel on CUDA (fastest, no transient copies);
        # the single-tensor loop on CPU (no transient copies; what the tests' exact losses were taken with).
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], foreach=False,
                                fused=device == "cuda", **adam)
        return Method("adamw", model, opt)
    if m.name == "lora":
        from peft import LoraConfig, get_peft_model
        lora = LoraConfig(r=m.lora_rank, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                          target_modules=targets, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        if t.activation_checkpointing:
            model.enable_input_require_grads()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], foreach=False, **adam)
        return Method("lora", model, opt, info={"targets": targets})
    if m.name == "galore":
        projected, plain, names = galore_parameters(model, targets, m.embeddings)
        if not projected:
            raise UserError(f"method.target_modules: no Linear weights match {targets}")
        opt = GaLoreAdamW([{"params": plain, "galore": False}, {"params": projected, "galore": True}],
                          rank=m.rank, update_proj_gap=m.update_proj_gap, scale=m.scale, proj_type=m.proj_type,
                          refresh=m.refresh, oversample=m.randomized_oversample, iters=m.randomized_iters,
                          seed=seed, **adam)
        layerwise = LayerwiseUpdater(model, opt, m.layerwise_accumulation, t.max_grad_norm) if m.layerwise \
            else None
        return Method("galore", model, opt, layerwise, {"projected": len(names), "targets": targets})
    if m.name == "galore8bit":
        if device != "cuda":
            raise UserError("method.name=galore8bit needs a CUDA GPU: bitsandbytes' 8-bit optimizer kernels "
                            "do not run on CPU (use method.name=galore on CPU)")
        from galore_torch import GaLoreAdamW8bit
        projected, plain, _ = galore_parameters(model, targets, m.embeddings)
        opt = GaLoreAdamW8bit([{"params": plain}, {"params": projected, "rank": m.rank, "scale": m.scale,
                                                    "update_proj_gap": m.update_proj_gap,
                                                    "proj_type": m.proj_type}], **adam)
        return Method("galore8bit", model, opt, info={"reference_optimizer": True})
    if m.name in ("apollo", "apollo_mini"):
        try:
            from apollo_torch import APOLLOAdamW
        except ImportError:
            raise UserError(f"method.name={m.name} needs the optional apollo-torch package, which is licensed "
                            "CC-BY-NC (non-commercial use only): pip install 'convlearn[apollo]'") from None
        projected, plain, _ = galore_parameters(model, targets)
        mini = m.name == "apollo_mini"
        opt = APOLLOAdamW([{"params": plain}, {
            "params": projected, "rank": 1 if mini else m.rank, "proj": "random",
            "scale_type": "tensor" if mini else "channel", "scale": 128 if mini else m.apollo_scale,
            "update_proj_gap": m.update_proj_gap, "proj_type": "std"}], **adam)
        return Method(m.name, model, opt, info={"reference_optimizer": True})
    raise UserError(f"method.name: unknown method {m.name!r}")
