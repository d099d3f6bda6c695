"""GaLore: AdamW whose 2-D weights keep their moments in a low-rank projection of the gradient.

Our own implementation, not galore_torch's, because the reference (1) keeps its projector as a Python object in
the optimizer state, so checkpoints cannot be loaded with `torch.load(weights_only=True)` and HF Trainer cannot
resume a GaLore run; (2) crashes or silently zeroes when an SVD fails; (3) only refreshes with a full SVD; and
(4) offers no per-parameter update for layer-wise training with gradient accumulation. The update rule is the
reference's (tests/train/test_galore.py checks parity with galore_torch.GaLoreAdamW across projector refreshes):

    R = P^T G  (or G P^T)        project the gradient (P refreshed every update_proj_gap steps from G)
    M, V <- Adam moments of R    bias-corrected step size lr * sqrt(1 - b2^t) / (1 - b1^t)
    W <- W - step * scale * P (M / (sqrt(V) + eps))        then W <- W - lr * wd * W

All optimizer state is tensors (moments, projector, step) plus plain numbers, so checkpoints load with
`weights_only=True`. With `stochastic_rounding` (pure-bf16 training, precision.py) moments and weights are
computed in fp32 and stored in bf16 rounded stochastically, so small updates survive in expectation. A group
with `galore=False` is plain AdamW (the GaLore reference's form: bias correction folded into the step size,
weight decay after the update).
"""
from __future__ import annotations

import logging
import math
import time

import torch

from ..precision import stochastic_round_

log = logging.getLogger(__name__)
# torch's fused AdamW kernel (CPU and CUDA): moments and update in one pass per tensor
_FUSED = getattr(torch, "_fused_adamw_", None)
FOREACH_CHUNK = 16  # tensors updated per foreach call in `step`


def projection_side(shape: torch.Size, proj_type: str) -> str:
    """'left' (P is m x r, R = P^T G) or 'right' (P is r x n, R = G P^T), as the reference decides."""
    m, n = shape
    if proj_type == "std":
        return "right" if m >= n else "left"
    if proj_type == "reverse_std":
        return "left" if m >= n else "right"
    return proj_type


def _orthonormal_random(rows: int, cols: int, generator: torch.Generator, device, dtype) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=generator, device=generator.device).to(device, dtype))
    return q


def _randomized_svd(mat: torch.Tensor, rank: int, oversample: int, iters: int, generator: torch.Generator,
                    start: torch.Tensor | None = None):
    """Halko et al. range finder + SVD of the small matrix; the random test matrix comes from our generator
    (torch.svd_lowrank would draw from the global RNG and break exact resume). `start` (n x r) seeds the
    range finder with a previous subspace (warm start): gradients drift slowly, so one power iteration from
    the old projector finds the new top subspace at a fraction of a full SVD's cost. The big matrix stays in
    its own dtype: only the thin products (m x k, k x n) are taken to fp32, so a bf16 embedding gradient is
    never copied whole."""
    m, n = mat.shape
    k = min(rank + oversample, m, n)
    omega = torch.randn(n, k if start is None else max(k - start.shape[1], 0), generator=generator,
                        device=generator.device).to(mat.device, torch.float32)
    if start is not None:
        omega = torch.cat([start.float(), omega], dim=1)[:, :k]

    def times(thin):  # mat @ thin, computed in mat's dtype, returned in fp32
        return (mat @ thin.to(mat.dtype)).float()

    def times_t(thin):  # mat.T @ thin
        return (mat.T @ thin.to(mat.dtype)).float()
    q, _ = torch.linalg.qr(times(omega))
    for _ in range(iters):
        q, _ = torch.linalg.qr(times_t(q))
        q, _ = torch.linalg.qr(times(q))
    ub, s, vh = torch.linalg.svd(times_t(q).T, full_matrices=False)
    return q @ ub, s, vh


def compute_projector(grad: torch.Tensor, rank: int, side: str, method: str, generator: torch.Generator,
                      oversample: int = 8, iters: int = 2, previous: torch.Tensor | None = None) -> torch.Tensor:
    """The projector for one gradient: left m x r (top left singular vectors) or right r x n. Only `svd` needs
    the gradient whole in fp32 (and its m x min(m, n) U): randomized and warm refreshes work on thin products."""
    mat = grad if grad.dtype == torch.float32 or method != "svd" else grad.float()
    m, n = mat.shape
    if method == "warm" and previous is not None:
        # Work on the matrix whose right singular vectors we want, seeded with the old ones.
        target = mat if side == "right" else mat.T
        start = previous.T if side == "right" else previous
        _, _, vh = _randomized_svd(target, rank, oversample, iters, generator, start=start)
        out = vh[:rank, :] if side == "right" else vh[:rank, :].T
    elif method == "random":
        p = _orthonormal_random(m if side == "left" else n, min(rank, m, n), generator, mat.device, torch.float32)
        out = p if side == "left" else p.T
    elif method in ("randomized", "warm"):  # warm with no previous projector: a plain randomized SVD
        u, _, vh = _randomized_svd(mat, rank, oversample, iters, generator)
        out = u[:, :rank] if side == "left" else vh[:rank, :]
    else:
        u, _, vh = torch.linalg.svd(mat, full_matrices=False)
        out = u[:, :rank] if side == "left" else vh[:rank, :]
    return out.to(grad.dtype).contiguous()  # a slice of U would keep all of U alive


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW with GaLore projection for parameter groups that set `galore=True`."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 *, rank: int = 128, update_proj_gap: int = 200, scale: float = 0.25, proj_type: str = "std",
                 refresh: str = "svd", oversample: int = 8, iters: int = 2, seed: int = 0,
                 stochastic_rounding: bool = False):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, galore=False, rank=rank,
                        update_proj_gap=update_proj_gap, scale=scale, proj_type=proj_type)
        super().__init__(params, defaults)
        self.refresh_method, self.oversample, self.iters = refresh, oversample, iters
        self.stochastic_rounding = stochastic_rounding
        device = next((p.device for g in self.param_groups for p in g["params"]), torch.device("cpu"))
        self.seed, self.device = seed, device
        self.generator = torch.Generator(device=device)  # stochastic rounding's draws (saved with the state)
        self.generator.manual_seed(seed)
        self.index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        self.stats = {"refreshes": 0, "refresh_fallbacks": 0, "refresh_seconds": 0.0}

    # -- projection -------------------------------------------------------------------------------------
    def group_of(self, p: torch.Tensor) -> dict:
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise KeyError("parameter is not in this optimizer")

    def refresh_due(self, p: torch.Tensor, group: dict) -> bool:
        state = self.state[p]
        return group["galore"] and ("projector" not in state or
                                    int(state["step"]) % group["update_proj_gap"] == 0)

    def _refresh_generator(self, p: torch.Tensor) -> torch.Generator:
        """The random draws of one weight's refresh, a function of (seed, weight, step) alone: the same projector
        whether weights are refreshed in the optimizer's order or in backward's (layer-wise), and on resume."""
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 1_000_003 + self.index[id(p)]) * 1_000_033 + int(self.state[p]["step"]))
        return g

    def _refresh(self, p: torch.Tensor, group: dict, grad: torch.Tensor) -> None:
        """New projector from the full gradient; on failure keep the old one (or use a random one)."""
        state = self.state[p]
        generator = self._refresh_generator(p)
        side = projection_side(p.shape, group["proj_type"])
        started = time.perf_counter()
        method = self.refresh_method
        new = None
        if torch.isfinite(grad).all():
            try:
                new = compute_projector(grad, group["rank"], side, method, generator, self.oversample,
                                        self.iters, previous=state.get("projector"))
                if not torch.isfinite(new).all():
                    new = None
            except (RuntimeError, torch.linalg.LinAlgError) as e:  # SVD did not converge
                log.warning("GaLore projector refresh (%s) failed for a %s weight: %s", method, tuple(p.shape), e)
        if new is None:
            self.stats["refresh_fallbacks"] += 1
            if "projector" in state:
                log.warning("GaLore: keeping the previous projector for a %s weight", tuple(p.shape))
            else:
                log.warning("GaLore: random projector for a %s weight (no usable gradient yet)", tuple(p.shape))
                new = compute_projector(grad.nan_to_num(0.0, 0.0, 0.0), group["rank"], side, "random",
                                        generator)
        if new is not None:
            state["projector"] = new
        self.stats["refreshes"] += 1
        self.stats["refresh_seconds"] += time.perf_counter() - started

    def project(self, p: torch.Tensor, grad: torch.Tensor, group: dict | None = None) -> torch.Tensor:
        """The low-rank gradient of a GaLore weight (refreshing its projector first when due)."""
        group = group or self.group_of(p)
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32)
        if self.refresh_due(p, group):
            self._refresh(p, group, grad)
        proj = state["projector"]
        return proj.T @ grad if projection_side(p.shape, group["proj_type"]) == "left" else grad @ proj.T

    def apply_back(self, p: torch.Tensor, low: torch.Tensor, group: dict, alpha: float) -> None:
        """W += alpha * scale * (P low | low P) in one addmm_: no full-size temporary, one pass over W."""
        proj = self.state[p]["projector"]
        if projection_side(p.shape, group["proj_type"]) == "left":
            p.addmm_(proj, low, alpha=alpha * group["scale"])
        else:
            p.addmm_(low, proj, alpha=alpha * group["scale"])

    # -- the update -------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, p: torch.Tensor, grad: torch.Tensor | None = None, low: torch.Tensor | None = None,
               group: dict | None = None) -> None:
        """One AdamW(+GaLore) update of one parameter, from its full gradient or an already projected one."""
        group = group or self.group_of(p)
        if group["galore"] and low is None:
            low = self.project(p, grad, group)
        self._apply([p], [low if group["galore"] else grad], group)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            # in chunks: foreach temporaries (square roots, projected gradients) exist for one chunk at a time
            for i in range(0, len(params), FOREACH_CHUNK):
                chunk = params[i:i + FOREACH_CHUNK]
                grads = [self.project(p, p.grad, group) if group["galore"] else p.grad for p in chunk]
                self._apply(chunk, grads, group)
        return loss

    def apply_updates(self, params: list[torch.Tensor], grads: list[torch.Tensor], group: dict,
                      coef: float = 1.0) -> None:
        """Update `params` from their (already projected, for a GaLore group) gradients scaled by `coef` (a
        clipping coefficient), in chunks: the layer-wise updater's deferred step."""
        for i in range(0, len(params), FOREACH_CHUNK):
            chunk = grads[i:i + FOREACH_CHUNK]
            if coef != 1.0:
                torch._foreach_mul_(chunk, coef)
            self._apply(params[i:i + FOREACH_CHUNK], chunk, group)

    def _apply(self, params: list[torch.Tensor], grads: list[torch.Tensor], group: dict) -> None:
        """The AdamW(+GaLore) update of `params` from their (projected) gradients. The moments and the step run
        in torch's fused AdamW kernel, on the weights themselves (a plain group) or on a zero buffer that then
        holds the low-rank update (a GaLore group), with eps scaled so the kernel computes the reference's rule
        (step lr * sqrt(bc2) / bc1, eps outside the bias correction); weight decay after the update, as the
        reference. Without the kernel (an unusual device, or steps that differ within the list), foreach ops."""
        beta1, beta2 = group["betas"]
        for p, g in zip(params, grads):
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32)
            if "exp_avg" not in state:
                state["exp_avg"] = torch.zeros_like(g)
                state["exp_avg_sq"] = torch.zeros_like(g)
            state["step"] += 1
        steps = [self.state[p]["step"] for p in params]
        sizes = [group["lr"] * math.sqrt(1.0 - beta2 ** int(s)) / (1.0 - beta1 ** int(s)) for s in steps]
        if self.stochastic_rounding:
            self._apply_rounded(params, grads, group, sizes)
            return
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        step = int(steps[0])
        if _FUSED and all(int(s) == step for s in steps) and params[0].device.type in ("cpu", "cuda"):
            kernel = dict(lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0,
                          eps=group["eps"] / math.sqrt(1.0 - beta2 ** step), amsgrad=False, maximize=False)
            if group["galore"]:
                updates = [torch.zeros_like(g) for g in grads]
                _FUSED(updates, grads, exp_avgs, exp_avg_sqs, [], steps, **kernel)
                for p, u in zip(params, updates):
                    self.apply_back(p, u, group, 1.0)
            else:
                _FUSED(params, grads, exp_avgs, exp_avg_sqs, [], steps, **kernel)
        else:
            torch._foreach_mul_(exp_avgs, beta1)
            torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
            denoms = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_add_(denoms, group["eps"])
            if group["galore"]:
                for p, exp_avg, denom, size in zip(params, exp_avgs, denoms, sizes):
                    self.apply_back(p, exp_avg / denom, group, -size)
            else:
                torch._foreach_addcdiv_(params, exp_avgs, denoms, [-s for s in sizes])
        if group["weight_decay"] > 0.0:
            torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])

    def _apply_rounded(self, params, grads, group: dict, sizes: list[float]) -> None:
        """The same update computed in fp32 from bf16 state, every store stochastically rounded to bf16."""
        beta1, beta2 = group["betas"]
        decay = 1.0 - group["lr"] * group["weight_decay"]
        for p, g, size in zip(params, grads, sizes):
            state = self.state[p]
            g32 = g.float()
            m32 = state["exp_avg"].float().mul_(beta1).add_(g32, alpha=1.0 - beta1)
            v32 = state["exp_avg_sq"].float().mul_(beta2).addcmul_(g32, g32, value=1.0 - beta2)
            stochastic_round_(state["exp_avg"], m32, self.generator)
            stochastic_round_(state["exp_avg_sq"], v32, self.generator)
            step = m32.div_(v32.sqrt_().add_(group["eps"]))
            w32 = p.float()
            if group["galore"]:
                proj = state["projector"].float()
                if projection_side(p.shape, group["proj_type"]) == "left":
                    w32.addmm_(proj, step, alpha=-size * group["scale"])
                else:
                    w32.addmm_(step, proj, alpha=-size * group["scale"])
            else:
                w32.add_(step, alpha=-size)
            if group["weight_decay"] > 0.0:
                w32.mul_(decay)
            stochastic_round_(p.data, w32, self.generator)

    # -- checkpoints: tensors and plain numbers only ----------------------------------------------------
    def state_dict(self):
        sd = super().state_dict()
        sd["galore"] = {"rng": self.generator.get_state(), "stats": dict(self.stats)}
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        extra = state_dict.pop("galore", None)
        super().load_state_dict(state_dict)
        if extra is not None:
            self.generator.set_state(extra["rng"])
            self.stats.update(extra["stats"])


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Exact bytes held in an optimizer's state tensors (moments, projectors, accumulators)."""
    total = 0
    for state in optimizer.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
    return total
