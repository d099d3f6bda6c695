"""Peak GPU memory, step speed and MFU of each training method at a seed model's real shape (random weights).

    python benchmarks/gpu_bench.py --shape Qwen/Qwen2.5-1.5B-Instruct [--batch 4] [--seq 1024] [--steps 5]
                                   [--json FILE] [--device cuda]

Per method, one after another in this process: the model is built on the device from the registry's
architecture facts in the precision trained with (`--precision bf16-mixed`, the default: fp32 master weights,
gradients and state, bf16 compute under autocast; `bf16`: pure bf16 with stochastically rounded updates; `fp32`
for the CPU dry run), the method from the same config overrides the memory table uses, then one warm-up step
(state allocated, first projector) and `--steps` timed steps exactly as the training loop runs them. Printed:
peak `torch.cuda.max_memory_allocated` (all of it: weights, gradients, state, activations, workspace), the
counted training state (train/memory.py) beside it, median step time, tokens/s and MFU (model FLOPs, 6 per
parameter per token plus attention, as PaLM counts them, over the card's dense bf16 peak). Also the activation
memory a forward pass keeps for backward, with and without activation checkpointing, and the time of one
full-SVD and one randomized projector refresh of the largest MLP weight. GaLore methods refresh with
`randomized` here (a full SVD of every weight on the first step would take most of the time budget).
`--device cpu --dtype float32` is the dry run the tests use (tiny shapes, no CUDA).
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time

import torch

from convlearn.precision import resolve_precision
from convlearn.train.memory import LEVERS, STANDARD_METHODS

# The memory table's methods and levers (APOLLO, an optional CC-BY-NC extra, is not carried to the GPU), plus
# activation checkpointing and the chunked loss; galore8bit last: its library refreshes by full SVD (slow).
ROWS = {
    "adamw": STANDARD_METHODS["adamw"],
    "adamw layer-wise": STANDARD_METHODS["adamw layer-wise"],
    "adamw + activation checkpointing": STANDARD_METHODS["adamw"] + ["train.activation_checkpointing=true"],
    **{k: STANDARD_METHODS[k] for k in ("lora r=64", "galore r=256", "galore r=128", "galore r=128 layer-wise")},
    **{k: LEVERS[k] for k in ("layer-wise r=128 + embeddings projected", "layer-wise r=128 + embeddings frozen")},
    "layer-wise r=128 + embeddings frozen + chunked loss": LEVERS["layer-wise r=128 + embeddings frozen"] + [
        "train.loss_chunk_tokens=1024"],
    "galore8bit r=128": STANDARD_METHODS["galore8bit r=128"],
}
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense, datasheet


def card_peak(device: str) -> tuple[str, float | None]:
    if not device.startswith("cuda"):
        return "cpu", None
    name = torch.cuda.get_device_name()
    return name, next((v for k, v in PEAK_BF16.items() if k in name), None)


def flops_per_token(model, seq: int) -> float:
    """6 x parameters doing matmuls (the input embedding is a lookup; a tied head still multiplies) plus
    attention's 12 x layers x seq x attention width (PaLM's convention: causal masking not discounted)."""
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    matmul_params = n - (0 if emb is head else emb.numel())
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 6 * matmul_params + 12 * c.num_hidden_layers * seq * c.num_attention_heads * head_dim


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def allocated(device: str) -> int:
    return torch.cuda.memory_allocated() if device.startswith("cuda") else 0


def build(shape: str, dtype, device: str, tiny: bool):
    from speed import build_model  # the one model builder of the benchmarks (benchmarks/speed.py)
    return build_model(shape, dtype, device, tiny)


def measure_method(label: str, overrides: list[str], args, dtype, batches) -> dict:
    from convlearn.config import load_config
    from convlearn.train.batches import token_losses
    from convlearn.train.methods import build_method, count_memory
    extra = ["train.activation_checkpointing=true"] if args.checkpointing else []
    cfg = load_config(None, overrides + extra + ["train.lr=1e-5", f"train.precision={args.precision}"])
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    model, spec = build(args.shape, dtype, args.device, args.tiny)
    weights_alloc = allocated(args.device)
    targets = cfg.method.target_modules or list(spec.facts.target_modules)
    counted = count_memory(model, cfg.method, targets, args.precision).as_dict()
    if cfg.train.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    method = build_method(model, cfg, spec, "cuda" if args.device.startswith("cuda") else "cpu")
    prec = resolve_precision(args.precision, args.device)  # as a run holds and computes (precision.py)
    prec.hold_frozen(method.model)
    method.model.train()
    times = []
    for i, batch in enumerate(batches):
        sync(args.device)
        t0 = time.perf_counter()
        if method.layerwise is not None:
            method.layerwise.begin_step(1)
        s, n = token_losses(method.model, batch, prec.autocast(), chunk_tokens=cfg.train.loss_chunk_tokens)
        (s / n).backward()
        if method.layerwise is None:
            torch.nn.utils.clip_grad_norm_(method.trainable, 1.0)
            method.optimizer.step()
        else:
            method.layerwise.finish_step()
        method.optimizer.zero_grad(set_to_none=True)
        sync(args.device)
        if i > 0:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    out = {"counted": counted, "weights_allocated": weights_alloc, "step_s": step,
           "tokens_per_s": args.batch * args.seq / step, "flops_per_token": flops_per_token(model, args.seq),
           "peak_allocated": torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None}
    if method.layerwise is not None:
        method.layerwise.remove()
    del method, model
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def activations(args, dtype, batch) -> dict:
    """Bytes the forward pass keeps alive for backward, with and without activation checkpointing."""
    from convlearn.train.batches import token_losses
    out = {}
    for ckpt in (False, True):
        model, _ = build(args.shape, dtype, args.device, args.tiny)
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        model.train()
        before = allocated(args.device)
        s, n = token_losses(model, batch)
        out["checkpointing" if ckpt else "plain"] = allocated(args.device) - before
        del s, n, model
        gc.collect()
    return out


def refresh_times(args, dtype) -> dict:
    """Seconds of one refresh of every projected weight, per refresh method: one weight of each distinct shape
    is timed (after a warm-up) and multiplied by how many weights have that shape."""
    from collections import Counter

    from convlearn.train.galore import compute_projector, projection_side
    from convlearn.train.params import galore_parameters
    model, spec = build(args.shape, dtype, args.device, args.tiny)
    projected, _, _ = galore_parameters(model, list(spec.facts.target_modules), rank=128)
    shapes = Counter(tuple(p.shape) for p in projected)
    del model, projected
    out: dict = {"shapes": {f"{m}x{n}": c for (m, n), c in shapes.items()}}
    totals = dict.fromkeys(("svd", "randomized", "warm"), 0.0)
    for (m, n), count in shapes.items():
        grad = torch.randn(m, n, device=args.device, dtype=dtype)
        side = projection_side(torch.Size((m, n)), "std")
        g = torch.Generator(device=args.device).manual_seed(0)
        previous = compute_projector(grad, 128, side, "svd", g)  # also the warm-up
        for kind, iters in (("svd", 2), ("randomized", 2), ("warm", 1)):
            sync(args.device)
            t0 = time.perf_counter()
            compute_projector(grad, 128, side, kind, g, iters=iters, previous=previous)
            sync(args.device)
            totals[kind] += count * (time.perf_counter() - t0)
    out.update({f"{k}_s": v for k, v in totals.items()})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="Qwen/Qwen2.5-1.5B-Instruct")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "bf16", "fp32"],
                    help="train.precision: the weights' dtype follows (fp32 masters for bf16-mixed)")
    ap.add_argument("--tiny", action="store_true", help="dry run: toy sizes of the family's architecture")
    ap.add_argument("--methods", nargs="*", help=f"a subset of: {', '.join(ROWS)}")
    ap.add_argument("--json")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing for every method")
    ap.add_argument("--budget", type=float, default=1e9, help="seconds; methods not started by then are skipped")
    args = ap.parse_args(argv)
    prec = resolve_precision(args.precision, args.device)
    args.dtype, dtype = prec.weight_dtype_name, prec.weight_dtype
    card, peak = card_peak(args.device)
    vocab = build(args.shape, dtype, "meta", args.tiny)[0].config.vocab_size
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(args.steps + 1):
        ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g).to(args.device)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                        "loss_mask": torch.ones_like(ids).bool()})
    res = {"shape": args.shape, "card": card, "peak_flops": peak, "batch": args.batch, "seq": args.seq,
           "checkpointing": args.checkpointing,
           "dtype": args.dtype, "precision": args.precision, "torch": torch.__version__, "methods": {}}
    rows = {k: ROWS[k] for k in args.methods} if args.methods else ROWS
    started = time.perf_counter()
    res["activations"] = activations(args, dtype, batches[0])
    res["refresh"] = refresh_times(args, dtype)
    for label, overrides in rows.items():
        if time.perf_counter() - started > args.budget:
            res["methods"][label] = {"error": f"skipped: the {args.budget:.0f} s budget was spent"}
        else:
            try:
                res["methods"][label] = measure_method(label, overrides, args, dtype, batches)
            except Exception as e:  # one method failing (e.g. bitsandbytes missing) must not lose the others
                res["methods"][label] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        print(label, json.dumps(res["methods"][label]), file=sys.stderr, flush=True)  # progress, in the log
        if args.json:  # after every method, so a run stopped at its time limit keeps what it measured
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
    print(render(res))


def render(res: dict) -> str:
    gb = 1e9
    ok = {k: v for k, v in res["methods"].items() if "error" not in v}
    base = ok.get("adamw")
    lines = [f"{res['shape']} ({res['card']}, torch {res['torch']}), {res.get('precision', res['dtype'])}, batch "
             f"{res['batch']} x "
             f"{res['seq']}{', activation checkpointing for all' if res.get('checkpointing') else ''}\n",
             "| method | peak allocated GB | vs adamw | counted weights+grads+state GB | vs adamw | s/step | "
             "tokens/s | speed vs adamw | MFU |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in res["methods"].items():
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} |||||||| ")
            continue
        peak = r["peak_allocated"]
        mfu = r["tokens_per_s"] * r["flops_per_token"] / res["peak_flops"] if res["peak_flops"] else None
        lines.append(
            f"| {label} | {peak / gb if peak else 0:.2f} | "
            f"{peak / base['peak_allocated'] if peak and base else 0:.2f} | {r['counted']['total'] / gb:.2f} | "
            f"{r['counted']['total'] / base['counted']['total'] if base else 0:.2f} | {r['step_s']:.3f} | "
            f"{r['tokens_per_s']:,.0f} | {base['step_s'] / r['step_s'] if base else 0:.2f} | "
            f"{'-' if mfu is None else f'{mfu:.1%}'} |")
    a, rf = res["activations"], res["refresh"]
    lines.append(f"\nActivations kept for backward: {a['plain'] / gb:.2f} GB, with activation checkpointing "
                 f"{a['checkpointing'] / gb:.2f} GB. Refreshing every projector once (rank 128; weights "
                 f"{rf['shapes']}): full SVD {rf['svd_s']:.2f} s, randomized {rf['randomized_s']:.2f} s, warm "
                 f"{rf['warm_s']:.2f} s.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
