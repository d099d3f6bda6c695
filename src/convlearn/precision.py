"""Numeric precision: the one policy for which dtype weights, gradients and optimizer state are held in and
what runs under autocast, resolved once per run from (`train.precision`, device) into a `Precision`, and the
stochastic rounding that makes pure-bf16 updates correct.

Modes (`train.precision`):
- `fp32`: everything in float32 (the CPU default: these CPUs have no bf16 units, bf16 matmuls are ~60x slower).
- `bf16-mixed` (the GPU default): fp32 master weights, fp32 gradients, fp32 optimizer state (Adam moments,
  GaLore's projected moments and projectors); the forward and backward run in bf16 under autocast. Weights that
  are not trained (a LoRA base, frozen embeddings) are held in bf16.
- `bf16` (opt-in, documented): weights, gradients and moments in bf16, half the memory of fp32 state. Plain
  bf16 arithmetic loses most small updates (at lr 2e-5 an update is below half an ulp of most weights, and
  `v * 0.999` rounds back to `v`, so Adam's second moment never decays): every store of a weight or a moment
  is therefore stochastically rounded from an fp32 computation, so it is right in expectation.

Training, the in-loop evaluation, `convlearn eval`, export and serving all load weights in
`Precision.weight_dtype` and compute under `Precision.autocast()`, so a checkpoint scores the same wherever it
is scored.

Why our own rounding and not torchao's AdamW(bf16_stochastic_round=True): torchao rounds only the weights
stochastically (its bf16 moments are stored round-to-nearest, so the second moment still cannot decay), draws
from the global RNG (our resume restores the optimizer's own generator instead), and compiles every parameter's
update with torch.compile (a C++ toolchain and minutes of compiling on CPU). GaLore needs the same rounding in
its own update anyway.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

MODES = ("fp32", "bf16-mixed", "bf16")


@dataclass(frozen=True)
class Precision:
    """How one run holds and computes numbers on its device (make it with `resolve_precision`)."""
    mode: str                   # "fp32" | "bf16-mixed" | "bf16"
    device: str                 # "cpu" | "cuda" | "cuda:N"
    weight_dtype: torch.dtype   # weights are loaded and kept in it (fp32 masters in bf16-mixed, bf16 in bf16)
    frozen_dtype: torch.dtype   # weights not trained: bf16 under bf16-mixed (no master copy needed), else as above

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the device's type under bf16-mixed; nothing otherwise. A new context per call."""
        if self.mode == "bf16-mixed":
            return torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def weight_dtype_name(self) -> str:
        """The weight dtype as configs and JSON spell it: "float32" / "bfloat16"."""
        return str(self.weight_dtype).removeprefix("torch.")

    def hold_frozen(self, model: torch.nn.Module) -> None:
        """Weights that are not trained (requires_grad off) go to `frozen_dtype`: under bf16-mixed a LoRA base or
        frozen embeddings are held in bf16, what a user of LoRA would load them in anyway."""
        if self.frozen_dtype == self.weight_dtype:
            return
        for p in model.parameters():
            if not p.requires_grad and p.dtype == self.weight_dtype:
                p.data = p.data.to(self.frozen_dtype)


def resolve_precision(precision: str, device: str) -> Precision:
    """The policy for `train.precision` on `device`: `auto` -> bf16-mixed on a GPU, fp32 on CPU."""
    mode = ("bf16-mixed" if device.startswith("cuda") else "fp32") if precision == "auto" else precision
    if mode not in MODES:
        raise ValueError(f"unknown precision {precision!r} (known: auto, {', '.join(MODES)})")
    weights = torch.bfloat16 if mode == "bf16" else torch.float32
    return Precision(mode, device, weights, torch.bfloat16 if mode == "bf16-mixed" else weights)


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
