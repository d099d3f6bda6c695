"""Layer-wise training: each weight's gradient is handled inside its own backward hook and freed at once, so
full gradients never all coexist (the memory saving that makes GaLore beat AdamW on total memory).

Two ways to decide the step (`method.layerwise_clipping`):
- `global` (the default): the step is decided as a whole after backward, exactly as the ordinary optimizer
  decides it: the hooks only project each GaLore weight's gradient to its low-rank form (refreshing the projector
  from the full gradient when due), add its squared norm to a running sum on the device (no host sync inside
  backward) and free the full gradient; after backward one sync gives the global norm, a non-finite step is
  skipped whole, and every update is applied from the low-rank gradients scaled by the global clipping
  coefficient. Same updates as non-layer-wise GaLore. What stays alive until then: the low-rank gradients, and
  the full gradients of weights that are not projected (norms, and embeddings unless projected or frozen; a
  tied embedding's gradient is alive until the end of backward anyway).
- `per_tensor`: each weight is updated inside its own hook, clipped by its own gradient norm (a different
  algorithm from global-norm clipping, named as such in reports); no gradient outlives its hook, and a weight
  whose gradient is non-finite is left as it is. One host sync per weight (its norm). Layer-wise AdamW (torch
  AdamW per parameter, PyTorch's optimizer-in-backward pattern) can only work this way: a global norm would
  need every full gradient kept.

Correct with gradient accumulation (HF Trainer refuses it; the GaLore repo steps on every micro-batch): nothing
is updated before the last micro-batch of a step. With `accumulation="lowrank"` each micro-batch's gradient of a
GaLore weight is projected and freed right away and the low-rank sums are accumulated (P^T sum g = sum P^T g);
on projector-refresh steps the full gradient is kept, since the SVD needs it. Other weights accumulate at full
size. The gradient norm is the real one whenever the full accumulated gradients pass through the hooks, and
unknown (None, never 0) when they never existed (low-rank accumulation between refreshes).
"""
from __future__ import annotations

import math

import torch

from .galore import GaLoreAdamW


class LayerwiseUpdater:
    def __init__(self, model: torch.nn.Module, optimizer, accumulation: str = "lowrank",
                 max_grad_norm: float | None = None, clipping: str = "global"):
        self.optimizer = optimizer
        self.accumulation = accumulation
        self.max_grad_norm = max_grad_norm
        self.deferred = clipping == "global"
        self.galore = isinstance(optimizer, GaLoreAdamW)
        if self.deferred and not self.galore:
            raise ValueError("global clipping in layer-wise mode needs low-rank gradients (GaLore)")
        # param -> index of its group: the optimizer's group dicts are replaced when a checkpoint's state is
        # loaded (the scheduler then sets the rate on the new ones), so they are looked up at every use
        self.group_index = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
        self.low: dict[int, torch.Tensor] = {}     # low-rank gradients (accumulated, or awaiting the step)
        self.pending: list[torch.Tensor] = []      # deferred: weights whose update waits for the global norm
        self.micro, self.n_micro = 0, 1
        self.norm_sq: torch.Tensor | float = 0.0   # a device tensor in deferred mode: no sync inside backward
        self.norm_exact = True
        self.nonfinite = 0
        self.grad_bytes_now = 0
        self.grad_bytes_peak = 0
        self.enabled = True  # off: the hooks leave gradients alone (benchmarks time a step's parts apart)
        self.handles = [p.register_post_accumulate_grad_hook(self._hook)
                        for g in optimizer.param_groups for p in g["params"]]

    def begin_step(self, n_micro: int) -> None:
        self.micro, self.n_micro = 0, n_micro
        self.norm_sq, self.norm_exact, self.nonfinite = 0.0, True, 0
        self.grad_bytes_now = self.grad_bytes_peak = 0
        self.pending = []

    def begin_micro(self, index: int) -> None:
        self.micro = index

    @property
    def grad_norm(self) -> float | None:
        return float(self.norm_sq) ** 0.5 if self.norm_exact else None

    def _track(self, delta: int) -> None:
        self.grad_bytes_now += delta
        self.grad_bytes_peak = max(self.grad_bytes_peak, self.grad_bytes_now)

    def _projected(self, group: dict) -> bool:
        return self.galore and group["galore"]

    def group(self, p: torch.Tensor) -> dict:
        return self.optimizer.param_groups[self.group_index[id(p)]]

    @torch.no_grad()
    def _hook(self, p: torch.Tensor) -> None:
        if not self.enabled or p.grad is None:
            return
        group = self.group(p)
        opt = self.optimizer
        nbytes = p.grad.numel() * p.grad.element_size()
        if self.micro < self.n_micro - 1:  # an earlier micro-batch: accumulate, never update
            if self._projected(group) and self.accumulation == "lowrank" and not opt.refresh_due(p, group):
                self._add_low(p, opt.project(p, p.grad, group))
                self._track(nbytes)
                p.grad = None
                self._track(-nbytes)
            elif self.micro == 0:
                self._track(nbytes)  # a full gradient now lives until the last micro-batch
            return
        if self.micro == 0 or id(p) in self.low:
            self._track(nbytes)
        accumulated = self.low.pop(id(p), None)
        if self.deferred:
            self._defer(p, group, accumulated, nbytes)
        else:
            self._update_now(p, group, accumulated, nbytes)

    def _add_low(self, p: torch.Tensor, low: torch.Tensor) -> None:
        if id(p) in self.low:
            self.low[id(p)].add_(low)
        else:
            self.low[id(p)] = low
            self._track(low.numel() * low.element_size())

    def _defer(self, p, group, accumulated, nbytes) -> None:
        """Global mode: keep what the step needs (low-rank or, for weights not projected, the full gradient),
        add the full gradient's squared norm to the device-side sum, free what is not needed."""
        grad = p.grad
        if accumulated is None:
            self.norm_sq = self.norm_sq + torch.linalg.vector_norm(grad, dtype=torch.float32).square()
        else:
            self.norm_exact = False  # the accumulated full gradient never existed
        if self._projected(group):
            low = self.optimizer.project(p, grad, group)
            if accumulated is not None:
                self._untrack_low(accumulated)
                low = accumulated.add_(low)
            self.low[id(p)] = low
            self._track(low.numel() * low.element_size())
            p.grad = None
            self._track(-nbytes)
        self.pending.append(p)

    def _untrack_low(self, low: torch.Tensor) -> None:
        self._track(-(low.numel() * low.element_size()))

    def _update_now(self, p, group, accumulated, nbytes) -> None:
        """Per-tensor mode: clip this weight by its own norm and update it inside the hook."""
        opt = self.optimizer
        grad = p.grad
        if accumulated is not None:
            accumulated.add_(opt.project(p, grad, group))
            self.norm_exact = False
            update_from = accumulated
        else:
            update_from = grad
        # One fp32 reduction and one host sync per tensor serve the norm, the finiteness check (a NaN/inf
        # element makes the norm non-finite) and the clipping.
        norm = float(torch.linalg.vector_norm(update_from, dtype=torch.float32))
        if accumulated is None:
            self.norm_sq += norm * norm
        if not math.isfinite(norm):
            self.nonfinite += 1  # leave this weight as it is; the loop counts the step as bad
        else:
            if self.max_grad_norm is not None and norm > self.max_grad_norm:
                update_from.mul_(self.max_grad_norm / (norm + 1e-6))
            if accumulated is not None:
                opt.update(p, low=update_from, group=group)
            else:
                opt.update(p, grad=update_from, group=group)
        if accumulated is not None:
            self._untrack_low(accumulated)
        p.grad = None
        self._track(-nbytes)

    @torch.no_grad()
    def finish_step(self) -> tuple[float | None, bool]:
        """After the last backward of a step: (gradient norm or None, whether the step was finite). In global
        mode this is where the step is decided (one host sync) and applied."""
        if not self.deferred:
            return self.grad_norm, self.nonfinite == 0
        grads = {id(p): self.low.pop(id(p)) if id(p) in self.low else p.grad for p in self.pending}
        if self.norm_exact:
            norm = float(self.norm_sq) ** 0.5
            finite = math.isfinite(norm)
        else:  # the norm is unknown: check the low-rank and full gradients for non-finite values instead
            norm = None
            check = sum(torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads.values())
            finite = math.isfinite(float(check)) if grads else True
        if finite:
            coef = 1.0
            if self.max_grad_norm is not None and norm is not None:  # clip_grad_norm_'s coefficient, exactly
                coef = min(1.0, self.max_grad_norm / (norm + 1e-6))
            for i, group in enumerate(self.optimizer.param_groups):
                members = [p for p in self.pending if self.group_index[id(p)] == i]
                if members:
                    self.optimizer.apply_updates(members, [grads[id(p)] for p in members], group, coef)
        else:
            self.nonfinite += 1
        for p in self.pending:
            g = grads[id(p)]
            if g is not p.grad:
                self._untrack_low(g)
            elif p.grad is not None:
                self._track(-(p.grad.numel() * p.grad.element_size()))
                p.grad = None
        self.pending = []
        self.low.clear()
        return norm, finite

    def discard_step(self) -> None:
        """A step abandoned before its end (a non-finite loss): drop what the hooks kept."""
        self.pending = []
        self.low.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
