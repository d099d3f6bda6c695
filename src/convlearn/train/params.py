"""Which parameters a method touches: target Linear weights, embedding matrices, frozen ones."""
from __future__ import annotations

import torch


def matches(name: str, targets: list[str] | tuple[str, ...]) -> bool:
    """A module name is a target if it is one, or ends with `.target`."""
    return any(name == t or name.endswith("." + t) for t in targets)


def embedding_weights(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The input embedding and the output head (one tensor when tied)."""
    found = []
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        w = getattr(module, "weight", None)
        if w is not None and not any(w is f for f in found):
            found.append(w)
    return found


def galore_parameters(model: torch.nn.Module, targets, embeddings: str = "train", rank: int | None = None
                      ) -> tuple[list, list, list[str]]:
    """(projected, plain, projected names): 2-D weights of the target Linear modules are projected, and the
    embedding matrices too with embeddings="project". With `rank`, a weight whose smaller side is not above it is
    left plain (trained full-rank): projecting it would hold more state than AdamW for no saving."""
    projected, names, seen = [], [], set()
    for mod_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and matches(mod_name, targets) and module.weight.requires_grad \
                and (rank is None or min(module.weight.shape) > rank):
            projected.append(module.weight)
            names.append(mod_name + ".weight")
            seen.add(id(module.weight))
    if embeddings == "project":
        named = {id(p): n for n, p in model.named_parameters()}
        for w in embedding_weights(model):
            if w.requires_grad and id(w) not in seen and (rank is None or min(w.shape) > rank):
                projected.append(w)
                names.append(named[id(w)])
                seen.add(id(w))
    plain = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    return projected, plain, names


def full_rank_targets(model: torch.nn.Module, targets, rank: int) -> list[str]:
    """Target weights whose smaller side is not above `rank` (GaLore trains them full-rank)."""
    return [f"{name} {tuple(m.weight.shape)}" for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and matches(name, targets) and min(m.weight.shape) <= rank]


def freeze_embeddings(model: torch.nn.Module) -> None:
    """`method.embeddings=freeze`: the embedding matrices get no gradient and no optimizer state."""
    for w in embedding_weights(model):
        w.requires_grad_(False)


def lora_adapter_shapes(model: torch.nn.Module, targets, rank: int) -> list[tuple[int, int]]:
    """(elements of A, elements of B) of each LoRA adapter peft puts on the target Linear modules."""
    return [(rank * mod.in_features, mod.out_features * rank) for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and matches(name, targets)]
