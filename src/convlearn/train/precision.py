"""Numeric precision of training: which dtype weights, gradients and optimizer state are held in, and the
stochastic rounding that makes pure-bf16 updates correct.

Modes (`train.precision`):
- `fp32`: everything in float32 (the CPU default: these CPUs have no bf16 units, bf16 matmuls are ~60x slower).
- `bf16-mixed` (the GPU default): fp32 master weights, fp32 gradients, fp32 optimizer state (Adam moments,
  GaLore's projected moments and projectors); the forward and backward run in bf16 under autocast.
- `bf16` (opt-in, documented): weights, gradients and moments in bf16, half the memory of fp32 state. Plain
  bf16 arithmetic loses most small updates (at lr 2e-5 an update is below half an ulp of most weights, and
  `v * 0.999` rounds back to `v`, so Adam's second moment never decays): every store of a weight or a moment
  is therefore stochastically rounded from an fp32 computation, so it is right in expectation.

Why our own rounding and not torchao's AdamW(bf16_stochastic_round=True): torchao rounds only the weights
stochastically (its bf16 moments are stored round-to-nearest, so the second moment still cannot decay), draws
from the global RNG (our resume restores the optimizer's own generator instead), and compiles every parameter's
update with torch.compile (a C++ toolchain and minutes of compiling on CPU). GaLore needs the same rounding in
its own update anyway.
"""
from __future__ import annotations

import torch

MODES = ("fp32", "bf16-mixed", "bf16")


def resolve(precision: str, device: str) -> str:
    """`auto` -> bf16-mixed on a GPU, fp32 on CPU."""
    if precision == "auto":
        return "bf16-mixed" if device.startswith("cuda") else "fp32"
    return precision


def weight_dtype(precision: str) -> str:
    """The dtype weights are loaded and kept in (bf16 only in pure bf16; the mixed mode's are fp32 masters)."""
    return "bfloat16" if precision == "bf16" else "float32"


def frozen_to_bf16(model: torch.nn.Module) -> None:
    """bf16-mixed: weights that are not trained (a LoRA base, frozen embeddings) need no fp32 master copy; they
    are held in bf16, what a user of LoRA would load them in anyway."""
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.float32:
            p.data = p.data.to(torch.bfloat16)


def stochastic_round_(dst: torch.Tensor, src: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """dst (bf16) <- src (fp32) rounded to one of its two neighbouring bf16 values, away from zero with the
    probability of the dropped 16 low bits / 2^16, so E[dst] = src. The random bits come from `generator`."""
    bits = src.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, generator=generator, device=generator.device,
                          dtype=torch.int32).to(bits.device)
    # Adding the noise to the low 16 bits carries into the kept bits with exactly that probability; on the
    # sign-magnitude layout that moves the magnitude away from zero for either sign.
    rounded = ((bits + noise) & -65536).view(torch.float32)  # -65536 == 0xFFFF0000 as int32
    dst.copy_(rounded.to(torch.bfloat16))
    return dst
