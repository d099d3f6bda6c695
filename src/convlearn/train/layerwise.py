"""Layer-wise GaLore: each weight is updated inside its own backward hook and its gradient freed at once, so
full gradients never all coexist (the memory saving that makes GaLore beat AdamW on total memory).

Correct with gradient accumulation (HF Trainer refuses it; the GaLore repo steps on every micro-batch): nothing
is updated before the last micro-batch of a step. With `accumulation="lowrank"` each micro-batch's gradient of a
GaLore weight is projected and freed right away and the low-rank sums are accumulated (P^T sum g = sum P^T g,
so the update equals the non-layer-wise one); on projector-refresh steps the full gradient is kept, since the
SVD needs it. Non-GaLore weights (embeddings, norms) accumulate at full size and are updated in their hook.

Gradient norm: the real one (sum of squared full-gradient norms, taken in the hooks) whenever the full
accumulated gradients pass through the hooks: always with grad_accum 1, with `accumulation="full"`, and on
refresh steps. Otherwise it does not exist anywhere in memory and is reported as unknown, never as 0.
Clipping: a global norm is only known after every update happened, so each tensor is clipped on its own.
"""
from __future__ import annotations

import math

import torch

from .galore import GaLoreAdamW


class LayerwiseUpdater:
    def __init__(self, model: torch.nn.Module, optimizer: GaLoreAdamW, accumulation: str = "lowrank",
                 max_grad_norm: float | None = None):
        self.optimizer = optimizer
        self.accumulation = accumulation
        self.max_grad_norm = max_grad_norm
        self.groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        self.low: dict[int, torch.Tensor] = {}
        self.micro, self.n_micro = 0, 1
        self.norm_sq = 0.0
        self.norm_exact = True
        self.nonfinite = 0
        self.grad_bytes_now = 0
        self.grad_bytes_peak = 0
        self.enabled = True
        self.handles = [p.register_post_accumulate_grad_hook(self._hook)
                        for g in optimizer.param_groups for p in g["params"]]

    def begin_step(self, n_micro: int) -> None:
        self.micro, self.n_micro = 0, n_micro
        self.norm_sq, self.norm_exact, self.nonfinite = 0.0, True, 0
        self.grad_bytes_now = self.grad_bytes_peak = 0

    def begin_micro(self, index: int) -> None:
        self.micro = index

    @property
    def grad_norm(self) -> float | None:
        return self.norm_sq ** 0.5 if self.norm_exact else None

    def _track(self, delta: int) -> None:
        self.grad_bytes_now += delta
        self.grad_bytes_peak = max(self.grad_bytes_peak, self.grad_bytes_now)

    @torch.no_grad()
    def _hook(self, p: torch.Tensor) -> None:
        if not self.enabled or p.grad is None:
            return
        group = self.groups[id(p)]
        opt = self.optimizer
        last = self.micro == self.n_micro - 1
        nbytes = p.grad.numel() * p.grad.element_size()
        if not last:
            if group["galore"] and self.accumulation == "lowrank" and not opt.refresh_due(p, group):
                low = opt.project(p, p.grad, group)
                if id(p) in self.low:
                    self.low[id(p)].add_(low)
                else:
                    self.low[id(p)] = low
                    self._track(low.numel() * low.element_size())
                self._track(nbytes)
                p.grad = None
                self._track(-nbytes)
            elif self.micro == 0:
                self._track(nbytes)  # a full gradient now lives until the last micro-batch
            return
        if self.micro == 0 or id(p) in self.low:
            self._track(nbytes)
        grad = p.grad
        low = self.low.pop(id(p), None)
        if low is not None:
            low.add_(opt.project(p, grad, group))
            self.norm_exact = False  # the accumulated full gradient never existed
            update_from = low
        else:
            update_from = grad
        # One fp32 reduction and one host sync per tensor serve the norm, the finiteness check (a NaN/inf
        # element makes the norm non-finite) and the clipping: on a GPU, syncs per tensor are what cost.
        norm = float(torch.linalg.vector_norm(update_from, dtype=torch.float32))
        if low is None:
            self.norm_sq += norm * norm
        if not math.isfinite(norm):
            self.nonfinite += 1  # leave this weight as it is; the loop counts the step as bad
        else:
            if self.max_grad_norm is not None and norm > self.max_grad_norm:
                update_from.mul_(self.max_grad_norm / (norm + 1e-6))
            if low is not None:
                opt.update(p, low=update_from, group=group)
            else:
                opt.update(p, grad=update_from, group=group)
        if low is not None:
            self._track(-(low.numel() * low.element_size()))
        p.grad = None
        self._track(-nbytes)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
