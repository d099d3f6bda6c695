"""Step speed of the training methods, side by side, with the projector-refresh cost apart.

    python benchmarks/speed.py [--reps 4] [--steps 3] [--batch 4] [--seq 512] [--accum 1] [--gaps 200 50]

One process, one ~34 M-parameter Qwen2-shaped model (random weights, fp32, CPU), one copy per method from the
same initial weights, the same batches. Methods run interleaved (A B C … A B C …, `--reps` rounds of
`--steps` steps), each step through build_method + the loop's forward/backward/clip/step. The median step
time excludes refreshes (the benchmark's gap is longer than the run); each GaLore method's refresh is timed
on its own afterwards (all projected weights; svd, randomized, warm) and amortised over the gap:

    speed vs adamw at gap G = adamw's median step / (the method's median step + refresh time / G)

`--device cuda --dtype bfloat16 --shape NAME` runs the same comparison on a GPU at a registry model's shape
(benchmarks/gpu.sh does this).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from convlearn.train.memory import STANDARD_METHODS

SHAPE = dict(hidden_size=512, intermediate_size=2816, num_hidden_layers=6, num_attention_heads=8,
             num_key_value_heads=2, vocab_size=8192, max_position_embeddings=1024, tie_word_embeddings=True)
# The methods that run on CPU, with the memory table's labels and overrides.
ROWS = {k: STANDARD_METHODS[k] for k in ("adamw", "lora r=64", "galore r=256", "galore r=128",
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
            arch.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=512,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16)
        config = AutoConfig.for_model(spec.family, **arch)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                 attn_implementation=spec.facts.attn_implementation)
    return model, spec


class Runner:
    """One method on its own copy of the model, stepping exactly as the training loop does."""

    def __init__(self, label: str, overrides: list[str], model, spec, device: str, gap: int, accum: int = 1):
        from convlearn.config import load_config
        from convlearn.train.methods import build_method
        cfg = load_config(None, overrides + ["train.lr=1e-5", f"method.update_proj_gap={gap}"])
        self.label, self.device, self.accum = label, device, accum
        self.method = build_method(model, cfg, spec, "cuda" if device.startswith("cuda") else "cpu")
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
            s, n = token_losses(m.model, batch)
            (s / n / self.accum).backward()
        if m.layerwise is None:
            torch.nn.utils.clip_grad_norm_(m.trainable, 1.0)
            m.optimizer.step()
        m.optimizer.zero_grad(set_to_none=True)
        sync(self.device)
        return time.perf_counter() - t0

    def refresh_seconds(self, batch: dict, method: str, iters: int = 2, repeats: int = 2) -> float | None:
        """Seconds to refresh every projector once from a real gradient (median of `repeats`)."""
        from convlearn.train.batches import token_losses
        opt = self.method.optimizer
        if not hasattr(opt, "refresh_method"):
            return None
        lw = self.method.layerwise
        if lw is not None:
            lw.enabled = False
        s, n = token_losses(self.method.model, batch)
        (s / n).backward()
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
        if lw is not None:
            lw.enabled = True
        return statistics.median(took)


def run(args) -> dict:
    dtype = getattr(torch, args.dtype)
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
        r = Runner(label, overrides, model, spec, args.device, gap=10 ** 6, accum=args.accum)
        r.step(batches[0])  # warm-up: allocation of state, first projector
        runners.append(r)
    for rep in range(args.reps):
        for r in runners:
            r.times += [r.step(b) for b in batches]
    out = {"params": params, "batch": args.batch, "seq": args.seq, "accum": args.accum, "device": args.device,
           "dtype": args.dtype, "shape": args.shape or "qwen2-34m", "refresh": args.refresh, "methods": {}}
    for r in runners:
        out["methods"][r.label] = {"step_s": statistics.median(r.times), "steps": len(r.times),
                                   **{f"refresh_{kind}_s": r.refresh_seconds(batches[0], kind, REFRESH[kind])
                                      for kind in args.refresh}}
    return out


def render(res: dict, gaps: list[int]) -> str:
    accum = res.get("accum", 1)
    tokens = res["batch"] * res["seq"] * accum
    base = res["methods"]["adamw"]["step_s"]
    kinds = res["refresh"]
    lines = [f"{res['shape']}, {res['params'] / 1e6:.1f} M parameters, {res['dtype']} on {res['device']}, batch "
             f"{res['batch']} x {res['seq']} tokens x {accum} micro-batches per step; medians of "
             f"{res['methods']['adamw']['steps']} interleaved steps per method; refreshes per 1,000 steps: "
             + ", ".join(f"{1000 / g:g} at gap {g}" for g in gaps) + "\n",
             f"| method | s/step | tokens/s | speed vs adamw, no refresh | one refresh s: {' / '.join(kinds)} | "
             + " | ".join(f"gap {g}: refresh share | gap {g}: speed vs adamw" for g in gaps)
             + " |", "|---|---:|---:|---:|---:|" + "---:|---:|" * len(gaps)]
    for label, m in res["methods"].items():
        cells = [f"{m['step_s']:.3f}", f"{tokens / m['step_s']:,.0f}", f"{base / m['step_s']:.3f}"]
        if m[f"refresh_{kinds[0]}_s"] is None:
            cells += ["-"] + ["-", f"{base / m['step_s']:.3f}"] * len(gaps)
        else:
            cells.append(" / ".join(f"{m[f'refresh_{k}_s']:.3f}" for k in kinds))
            for gap in gaps:
                per = [m[f"refresh_{k}_s"] / gap for k in kinds]
                cells.append(" / ".join(f"{v / (m['step_s'] + v):.1%}" for v in per))
                cells.append(" / ".join(f"{base / (m['step_s'] + v):.3f}" for v in per))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step (train.grad_accum)")
    ap.add_argument("--gaps", type=int, nargs="*", default=[200, 50])
    ap.add_argument("--methods", nargs="*", help=f"a subset of: {', '.join(ROWS)}")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--shape", help="a registry model id (default: the 34 M Qwen2 shape)")
    ap.add_argument("--tiny", action="store_true", help="with --shape: toy sizes of that family (dry runs)")
    ap.add_argument("--refresh", nargs="*", default=list(REFRESH), choices=list(REFRESH),
                    help="refresh methods to time (a full SVD of every weight is slow on big shapes)")
    ap.add_argument("--json", help="also write the raw figures here")
    args = ap.parse_args(argv)
    res = run(args)
    print(render(res, args.gaps))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
