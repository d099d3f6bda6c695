"""Step speed of the training methods against the strongest AdamW (torch's fused kernel), side by side, with the
projector-refresh cost apart and the GaLore optimizer step against its matmul floor.

    python benchmarks/speed.py [--rounds 5] [--steps 2] [--batch 4] [--seq 512] [--accum 1] [--gaps 200 50]

One process, one ~34 M-parameter Qwen2-shaped model (random weights, fp32, CPU), one copy per method from the
same initial weights, the same batches. Each round runs every method for `--steps` steps, in a random order per
round (so drift of a noisy machine falls on all methods alike); every method gets rounds x steps samples. Each
step goes through build_method + the loop's forward/backward/clip/step. Reported per method: the median step,
and its speed against fused AdamW (adamw's median / the method's median) with a 95% bootstrap interval over the
samples; the tokens per step stand beside every ratio. Refreshes are timed on their own afterwards (all projected
weights; svd, randomized, warm) and amortised over the gap:

    speed vs adamw at gap G = adamw's median step / (the method's median step + refresh time / G)

The optimizer step alone (clip + step on fixed gradients) is timed for AdamW and GaLore next to GaLore's matmul
floor: the projection and project-back matmuls of every projected weight (4 r FLOPs per weight element) plus
fused AdamW on the parameters GaLore leaves unprojected, the work no implementation can skip.

`--device cuda --precision bf16-mixed --shape NAME` runs the same comparison on a GPU at a registry model's shape
(benchmarks/gpu.sh does this): fp32 master weights and state, bf16 compute under autocast, as training does.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import numpy as np
import torch

from convlearn.precision import resolve_precision
from convlearn.train.memory import STANDARD_METHODS

SHAPE = dict(hidden_size=512, intermediate_size=2816, num_hidden_layers=6, num_attention_heads=8,
             num_key_value_heads=2, vocab_size=8192, max_position_embeddings=1024, tie_word_embeddings=True)
# The methods that run on CPU, with the memory table's labels and overrides.
ROWS = {k: STANDARD_METHODS[k] for k in ("adamw", "adamw layer-wise", "lora r=64", "galore r=256", "galore r=128",
                                         "galore r=128 layer-wise")}

# Refresh methods timed (method.refresh) and their power iterations.
REFRESH = {"svd": 2, "randomized": 2, "warm": 1}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_model(shape: str | None, dtype, device: str, tiny: bool = False):
    """(model, registry spec or None): the 34 M Qwen2 shape, or a registry model's real architecture (`tiny`:
    the same family at toy sizes, for dry runs), with random weights made on the device itself."""
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config

    from convlearn.models import FAMILIES, REGISTRY, ModelSpec
    if shape is None:
        config, spec = Qwen2Config(**SHAPE), ModelSpec("qwen2-34m", FAMILIES["qwen2"])
    else:
        spec = REGISTRY[shape]
        arch = dict(spec.arch)
        if tiny:
            # toy sizes whose attention and MLP weights are still wider than rank 128 (projected, not full-rank)
            arch.update(hidden_size=256, intermediate_size=512, num_hidden_layers=2, vocab_size=512,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=64)
        config = AutoConfig.for_model(spec.family, **arch)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                 attn_implementation=spec.facts.attn_implementation)
    return model, spec


class Runner:
    """One method on its own copy of the model, stepping exactly as the training loop does."""

    def __init__(self, label: str, overrides: list[str], model, spec, device: str, gap: int, accum: int = 1,
                 precision: str = "fp32"):
        from convlearn.config import load_config
        from convlearn.train.methods import build_method
        cfg = load_config(None, overrides + ["train.lr=1e-5", f"method.update_proj_gap={gap}",
                                             f"train.precision={precision}"])
        self.label, self.device, self.accum = label, device, accum
        self.method = build_method(model, cfg, spec, "cuda" if device.startswith("cuda") else "cpu")
        self.precision = resolve_precision(precision, device)  # as a run holds and computes (precision.py)
        self.precision.hold_frozen(self.method.model)
        self.times: list[float] = []

    def step(self, batch: dict) -> float:
        from convlearn.train.batches import token_losses
        m = self.method
        sync(self.device)
        t0 = time.perf_counter()
        if m.layerwise is not None:
            m.layerwise.begin_step(self.accum)
        for i in range(self.accum):  # micro-batches of one optimizer step (the same batch: timing only)
            if m.layerwise is not None:
                m.layerwise.begin_micro(i)
            s, n = token_losses(m.model, batch, self.precision.autocast())
            (s / n / self.accum).backward()
        if m.layerwise is None:
            torch.nn.utils.clip_grad_norm_(m.trainable, 1.0)
            m.optimizer.step()
        else:
            m.layerwise.finish_step()
        m.optimizer.zero_grad(set_to_none=True)
        sync(self.device)
        return time.perf_counter() - t0

    def gradients(self, batch: dict) -> None:
        """Leave fixed gradients on the trainable weights (hooks off), for timing the optimizer step alone."""
        from convlearn.train.batches import token_losses
        lw = self.method.layerwise
        if lw is not None:
            lw.enabled = False
        s, n = token_losses(self.method.model, batch, self.precision.autocast())
        (s / n).backward()
        if lw is not None:
            lw.enabled = True

    def optimizer_step(self, batch: dict, repeats: int = 10) -> dict | None:
        """Clip + optimizer step on fixed gradients, and (GaLore) its matmul floor timed in alternation with it:
        medians, and the median ratio of the pairs (a drifting machine moves both members of a pair alike)."""
        if self.method.layerwise is not None:
            return None
        self.gradients(batch)
        grads = [p.grad.clone() for p in self.method.trainable]
        floor = self._floor_work()
        steps, floors = [], []
        for _ in range(repeats):
            for p, g in zip(self.method.trainable, grads):
                p.grad = g.clone()
            sync(self.device)
            t0 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(self.method.trainable, 1.0)
            self.method.optimizer.step()
            sync(self.device)
            steps.append(time.perf_counter() - t0)
            if floor is not None:
                floors.append(floor())
        self.method.optimizer.zero_grad(set_to_none=True)
        out = {"step_s": statistics.median(steps)}
        if floors:
            ratios = [a / b for a, b in zip(steps, floors)]
            out.update(floor_s=statistics.median(floors), step_over_floor=statistics.median(ratios),
                       step_over_floor_range=[min(ratios), max(ratios)])
        return out

    def _floor_work(self):
        """A function timing the work a GaLore step cannot skip: per projected weight, the projection and the
        project-back matmuls at its rank; fused AdamW on the weights it does not project. None for others."""
        opt = self.method.optimizer
        if not hasattr(opt, "refresh_method"):
            return None
        from convlearn.train.galore import projection_side
        projected = [(p, g) for g in opt.param_groups if g["galore"] for p in g["params"]]
        plain = [p for g in opt.param_groups if not g["galore"] for p in g["params"]]
        work = []
        for p, group in projected:
            r = min(group["rank"], *p.shape)
            left = projection_side(p.shape, group["proj_type"]) == "left"
            proj = torch.randn((p.shape[0], r) if left else (r, p.shape[1]), dtype=p.dtype, device=p.device)
            work.append((p.detach().clone(), proj, torch.randn_like(p), left))
        flat = [p.detach().clone() for p in plain]
        adam = torch.optim.AdamW(flat, lr=1e-5, fused=True)
        for f in flat:
            f.grad = torch.randn_like(f)
        adam.step()

        def timed() -> float:
            sync(self.device)
            t0 = time.perf_counter()
            for w, proj, grad, left in work:
                low = proj.T @ grad if left else grad @ proj.T
                if left:
                    w.addmm_(proj, low, alpha=-1e-5)
                else:
                    w.addmm_(low, proj, alpha=-1e-5)
            adam.step()
            sync(self.device)
            return time.perf_counter() - t0
        return timed

    def refresh_seconds(self, batch: dict, method: str, iters: int = 2, repeats: int = 2) -> float | None:
        """Seconds to refresh every projector once from a real gradient (median of `repeats`)."""
        opt = self.method.optimizer
        if not hasattr(opt, "refresh_method") or not any(g["galore"] for g in opt.param_groups):
            return None
        self.gradients(batch)
        projected = [(p, g) for g in opt.param_groups if g["galore"] for p in g["params"]]
        opt.refresh_method, opt.iters, took = method, iters, []
        for _ in range(repeats):
            sync(self.device)
            t0 = time.perf_counter()
            for p, group in projected:
                opt._refresh(p, group, p.grad)
            sync(self.device)
            took.append(time.perf_counter() - t0)
        opt.zero_grad(set_to_none=True)
        return statistics.median(took)


def ratio_interval(base: list[float], times: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of median(base) / median(times), resampling each method's step samples."""
    rng = np.random.default_rng(seed)
    b, t = np.asarray(base), np.asarray(times)
    boot = np.median(b[rng.integers(0, len(b), (n_boot, len(b)))], 1) / \
        np.median(t[rng.integers(0, len(t), (n_boot, len(t)))], 1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return float(lo), float(hi)


def run(args) -> dict:
    dtype = resolve_precision(args.precision, args.device).weight_dtype
    rows = {k: ROWS[k] for k in args.methods} if args.methods else ROWS
    base, spec = build_model(args.shape, dtype, args.device, args.tiny)
    initial = {k: v.clone() for k, v in base.state_dict().items()}
    vocab, params = base.config.vocab_size, sum(p.numel() for p in base.parameters())
    del base
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(args.steps):
        ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g).to(args.device)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                        "loss_mask": torch.ones_like(ids).bool()})
    runners = []
    for label, overrides in rows.items():
        model, _ = build_model(args.shape, dtype, args.device, args.tiny)
        model.load_state_dict(initial)
        r = Runner(label, overrides, model, spec, args.device, gap=10 ** 6, accum=args.accum,
                   precision=args.precision)
        r.step(batches[0])  # warm-up: allocation of state, first projector
        runners.append(r)
    order = random.Random(0)
    for _ in range(args.rounds):
        for r in order.sample(runners, len(runners)):  # a new random order every round
            r.times += [r.step(b) for b in batches]
    out = {"params": params, "batch": args.batch, "seq": args.seq, "accum": args.accum, "device": args.device,
           "dtype": args.precision, "shape": args.shape or "qwen2-34m", "refresh": args.refresh,
           "threads": torch.get_num_threads(), "methods": {}}
    adamw = next(r for r in runners if r.label == "adamw")
    for r in runners:
        out["methods"][r.label] = {"step_s": statistics.median(r.times), "steps": len(r.times), "times": r.times,
                                   "vs_adamw_interval": ratio_interval(adamw.times, r.times),
                                   "optimizer": r.optimizer_step(batches[0]),
                                   **{f"refresh_{kind}_s": r.refresh_seconds(batches[0], kind, REFRESH[kind])
                                      for kind in args.refresh}}
    return out


def render(res: dict, gaps: list[int]) -> str:
    accum = res.get("accum", 1)
    tokens = res["batch"] * res["seq"] * accum
    base = res["methods"]["adamw"]["step_s"]
    kinds = res["refresh"]
    lines = [f"{res['shape']}, {res['params'] / 1e6:.1f} M parameters, {res['dtype']} on {res['device']} "
             f"({res.get('threads', '?')} threads), {tokens:,} tokens per step (batch {res['batch']} x "
             f"{res['seq']} x {accum} micro-batches); baseline: fused AdamW; medians of "
             f"{res['methods']['adamw']['steps']} steps per method in randomly ordered rounds, 95% bootstrap "
             "intervals; refreshes per 1,000 steps: " + ", ".join(f"{1000 / g:g} at gap {g}" for g in gaps) + "\n",
             f"| method | s/step | tokens/s | speed vs fused adamw, no refresh [95%] | one refresh s: "
             f"{' / '.join(kinds)} | " + " | ".join(f"gap {g}: speed vs fused adamw" for g in gaps)
             + " |", "|---|---:|---:|---:|---:|" + "---:|" * len(gaps)]
    for label, m in res["methods"].items():
        lo, hi = m["vs_adamw_interval"]
        cells = [f"{m['step_s']:.3f}", f"{tokens / m['step_s']:,.0f}",
                 f"{base / m['step_s']:.3f} [{lo:.3f}, {hi:.3f}] @ {tokens:,} tok"]
        if m.get(f"refresh_{kinds[0]}_s") is None:
            cells += ["-"] + [f"{base / m['step_s']:.3f}"] * len(gaps)
        else:
            cells.append(" / ".join(f"{m[f'refresh_{k}_s']:.3f}" for k in kinds))
            for gap in gaps:
                cells.append(" / ".join(f"{base / (m['step_s'] + m[f'refresh_{k}_s'] / gap):.3f}" for k in kinds))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    opt = {k: m["optimizer"] for k, m in res["methods"].items() if m.get("optimizer")}
    if opt:
        lines += ["", "Optimizer step alone (clip + step on fixed gradients) and GaLore's matmul floor (projection "
                      "+ project-back at its rank, fused AdamW on the unprojected weights), timed in alternation:\n",
                  "| method | optimizer step s | vs fused adamw's step | matmul floor s | "
                  "step / floor (median of pairs, "
                  "range) |", "|---|---:|---:|---:|---:|"]
        a = opt["adamw"]["step_s"]
        for label, m in opt.items():
            floor = (f"{m['floor_s']:.3f} | {m['step_over_floor']:.2f} ({m['step_over_floor_range'][0]:.2f}-"
                     f"{m['step_over_floor_range'][1]:.2f}) |") if "floor_s" in m else "- | - |"
            lines.append(f"| {label} | {m['step_s']:.3f} | {m['step_s'] / a:.2f} | " + floor)
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step (train.grad_accum)")
    ap.add_argument("--gaps", type=int, nargs="*", default=[200, 50])
    ap.add_argument("--methods", nargs="*", help=f"a subset of: {', '.join(ROWS)}")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed", "bf16"],
                    help="train.precision (the GPU default is bf16-mixed)")
    ap.add_argument("--shape", help="a registry model id (default: the 34 M Qwen2 shape)")
    ap.add_argument("--tiny", action="store_true", help="with --shape: toy sizes of that family (dry runs)")
    ap.add_argument("--refresh", nargs="*", default=list(REFRESH), choices=list(REFRESH),
                    help="refresh methods to time (a full SVD of every weight is slow on big shapes)")
    ap.add_argument("--json", help="also write the raw figures here")
    args = ap.parse_args(argv)
    if args.rounds * args.steps < 10:
        ap.error("--rounds x --steps must give at least 10 samples per method")
    res = run(args)
    print(render(res, args.gaps))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
