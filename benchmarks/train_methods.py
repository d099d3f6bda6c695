"""Side-by-side cost of the training methods on a ~34 M-parameter Qwen2-shaped model (random weights, fp32, CPU).

    python benchmarks/train_methods.py [--rounds 2] [--steps 6] [--batch 4] [--seq 256]

Each method runs in its own subprocess (so peak RSS is its own), in interleaved rounds (A B C D E, A B C D E),
through the same build_method + forward/backward/clip/step the training loop uses. Printed per method: median
step time and its ratio to adamw, tokens/s, and the counted bytes of trainable weights, gradients held at
peak and optimizer state (projectors included), with ratios to adamw, plus the measured peak RSS growth.
The first GaLore step (projector SVD) is reported separately from the median.

Accounting check: each method's counted training state (train/memory.py, from shapes alone) beside what the
process really grew by (peak RSS after the model was built), both as differences to adamw: activations and
the allocator's own overhead are the same for every method and cancel, so the two differences should agree.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from speed import ROWS as METHODS  # the same methods and model shape as benchmarks/speed.py
from speed import SHAPE

# glibc raises its mmap threshold each time a large block is freed, after which tensors come from the heap and
# freed ones stay in the RSS; a fixed threshold makes every tensor over 64 KiB its own mapping, returned when
# freed, so peak RSS follows the tensors alive (the same for every method).
WORKER_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}


def worker(name: str, steps: int, batch: int, seq: int) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from convlearn.config import load_config
    from convlearn.models import FAMILIES, ModelSpec
    from convlearn.train.batches import token_losses
    from convlearn.train.galore import state_bytes
    from convlearn.train.methods import build_method
    from convlearn.train.telemetry import tensor_bytes

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**SHAPE))
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = load_config(None, METHODS[name] + ["train.lr=1e-4"])
    method = build_method(model, cfg, ModelSpec("bench", FAMILIES["qwen2"]), "cpu")
    g = torch.Generator().manual_seed(1)
    times, grad_peak = [], 0
    for _ in range(steps + 1):
        ids = torch.randint(0, SHAPE["vocab_size"], (batch, seq), generator=g)
        b = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": torch.ones_like(ids).bool()}
        t0 = time.perf_counter()
        if method.layerwise is not None:
            method.layerwise.begin_step(1)
        s, n = token_losses(method.model, b)
        (s / n).backward()
        if method.layerwise is None:
            grad_peak = max(grad_peak, tensor_bytes(p.grad for p in method.trainable))
            torch.nn.utils.clip_grad_norm_(method.trainable, 1.0)
            method.optimizer.step()
        else:
            method.layerwise.finish_step()
            grad_peak = max(grad_peak, method.layerwise.grad_bytes_peak)
        method.optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    from convlearn.train.methods import count_memory
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.device("meta"):  # shapes only: counting allocates nothing
        shape_only = Qwen2ForCausalLM(Qwen2Config(**SHAPE))
    counted = count_memory(shape_only, cfg.method, list(FAMILIES["qwen2"].target_modules))
    return {"first_step_s": times[0], "step_s": statistics.median(times[1:]),
            "counted_grads_state_mb": (counted.grads + counted.state) / 2**20,
            "tokens_per_s": batch * seq / statistics.median(times[1:]),
            "params": sum(p.numel() for p in model.parameters()),
            "trainable_bytes": tensor_bytes(method.trainable), "grad_peak_bytes": grad_peak,
            "optimizer_state_bytes": state_bytes(method.optimizer),
            "rss_growth_mb": (rss - rss_model) / 1024}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.batch, args.seq)))
        return
    results: dict[str, list[dict]] = {m: [] for m in METHODS}
    for r in range(args.rounds):
        for m in METHODS:
            out = subprocess.run([sys.executable, __file__, "--worker", m, "--steps", str(args.steps),
                                  "--batch", str(args.batch), "--seq", str(args.seq)],
                                 capture_output=True, text=True, check=True, env=WORKER_ENV)
            results[m].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}: {m}: {results[m][-1]['step_s']:.3f} s/step", file=sys.stderr, flush=True)
    med = {m: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for m, rs in results.items()}
    base = med["adamw"]
    print(f"Qwen2-shaped model, {base['params'] / 1e6:.1f} M parameters, fp32, batch {args.batch} x {args.seq} "
          f"tokens, {args.rounds} interleaved rounds x {args.steps} timed steps (medians)\n")
    print("| method | s/step | speed vs adamw | tokens/s | first step s | optimizer state MB | vs adamw "
          "| gradients at peak MB | vs adamw | weights+grads+state vs adamw | peak RSS growth MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    weights = base["params"] * 4  # every method holds the full weights (LoRA's frozen, plus its adapters)

    def total(r: dict) -> float:
        return weights + r["trainable_bytes"] * (r is not base and r["trainable_bytes"] < weights) + \
            r["grad_peak_bytes"] + r["optimizer_state_bytes"]
    for m, r in med.items():
        print(f"| {m} | {r['step_s']:.3f} | {base['step_s'] / r['step_s']:.2f} | {r['tokens_per_s']:,.0f} | "
              f"{r['first_step_s']:.2f} | {r['optimizer_state_bytes'] / 2**20:.1f} | "
              f"{r['optimizer_state_bytes'] / base['optimizer_state_bytes']:.2f} | "
              f"{r['grad_peak_bytes'] / 2**20:.1f} | {r['grad_peak_bytes'] / base['grad_peak_bytes']:.2f} | "
              f"{total(r) / total(base):.2f} | {r['rss_growth_mb']:.0f} |")
    print("\nAccounting check: gradients + optimizer state counted from shapes vs peak RSS growth, both as the "
          "difference to adamw (MB)\n")
    print("| method | counted difference | measured RSS difference | gap, as a share of adamw's counted total |")
    print("|---|---:|---:|---:|")
    base_total = base["counted_grads_state_mb"] + weights / 2**20
    for m, r in med.items():
        counted = r["counted_grads_state_mb"] - base["counted_grads_state_mb"]
        measured = r["rss_growth_mb"] - base["rss_growth_mb"]
        print(f"| {m} | {counted:+.0f} | {measured:+.0f} | {abs(measured - counted) / base_total:.1%} |")


if __name__ == "__main__":
    main()
