"""Training-state memory of every method at the seed models' real shapes, counted on the meta device.

    python benchmarks/memory.py [--models all|ID ...] [--json FILE] [--activations --batch 1 --seq 2048]

No weights are downloaded and nothing is allocated: each model is built from the registry's architecture
facts on the meta device in bf16 (what a GPU run uses), and `convlearn.train.memory.count_memory` counts the
bytes of weights, gradients at their peak and optimizer state (projectors included) each method holds.
Activations are not in these figures; `--activations` measures them apart for a stated batch and sequence
length, with and without activation checkpointing: the forward pass runs on fake tensors (no storage, no
compute) under torch's MemTracker, which records every tensor's bytes, and the activation memory is what the
forward leaves alive for backward (the loss's fp32 log-probabilities included), through the training loop's own
loss, as benchmarks/gpu_bench.py measures it on a GPU.
"""
from __future__ import annotations

import argparse
import json

from convlearn.models import REGISTRY, meta_model
from convlearn.train.memory import LEVERS, STANDARD_METHODS, method_config
from convlearn.train.methods import count_memory

GB = 1e9
LOSS_CHUNK = 1024  # train.loss_chunk_tokens measured beside checkpointing


def count_all(models: list[str], rows: dict[str, list[str]]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for name in models:
        model, spec = meta_model(name), REGISTRY[name]
        out[name] = {}
        for label, overrides in rows.items():
            method = method_config(overrides)
            targets = method.target_modules or list(spec.facts.target_modules)
            out[name][label] = count_memory(model, method, targets).as_dict()
    return out


def activation_bytes(name: str, batch: int, seq: int, checkpointing: bool, loss_chunk: int = 0) -> int:
    """Bytes the forward pass of a training step keeps for backward, measured on fake tensors."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from convlearn.train.batches import chunked_cross_entropy
    with FakeTensorMode():
        model = meta_free_model(name)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        model.train()
        ids = torch.randint(0, model.config.vocab_size, (batch, seq))
        tracker = MemTracker()
        tracker.track_external(model)
        with tracker:
            before = tracker.get_tracker_snapshot("current")
            # train.batches.token_losses with every token in the loss mask (a boolean-mask index has a
            # data-dependent shape, which fake tensors cannot carry; the copy it makes is the same size)
            if loss_chunk:  # train.loss_chunk_tokens: the same code path as token_losses
                out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True,
                            logits_to_keep=1)
                hidden = out.hidden_states[-1][:, :-1].reshape(-1, model.config.hidden_size)
                loss = chunked_cross_entropy(hidden, ids[:, 1:].reshape(-1), model, loss_chunk)
                del out, hidden
            else:
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
                logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
                loss = torch.nn.functional.cross_entropy(logits, ids[:, 1:].reshape(-1), reduction="sum")
                del logits
            after = tracker.get_tracker_snapshot("current")
            del loss
    dev = next(iter(after))
    return after[dev]["Total"] - before.get(dev, {}).get("Total", 0)


def meta_free_model(name: str):
    """The registry model built normally (under FakeTensorMode its tensors are fake: no storage)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    spec = REGISTRY[name]
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.family, **spec.arch), dtype=torch.bfloat16,
                                            attn_implementation=spec.facts.attn_implementation)


def render_activations(acts: dict[str, dict[str, int]], batch: int, seq: int) -> str:
    lines = [f"Activation memory of one training step (what forward keeps for backward), batch {batch} x {seq} "
             "tokens, bf16, GB\n", "| model | no checkpointing | activation checkpointing | saved | checkpointing "
             f"+ loss in chunks of {LOSS_CHUNK} tokens | saved |", "|---|---:|---:|---:|---:|---:|"]
    for name, a in acts.items():
        lines.append(f"| {name.split('/')[1]} | {a['plain'] / GB:.2f} | {a['checkpointing'] / GB:.2f} | "
                     f"{1 - a['checkpointing'] / a['plain']:.0%} | {a['chunked'] / GB:.2f} | "
                     f"{1 - a['chunked'] / a['plain']:.0%} |")
    return "\n".join(lines)


def render(counts: dict[str, dict[str, dict]]) -> str:
    lines = ["Total training state (weights + gradients at peak + optimizer state), GB, and its ratio to adamw; "
             "bf16 weights and gradients.\n",
             "| method | " + " | ".join(n.split("/")[1] for n in counts) + " |",
             "|---|" + "---:|" * len(counts)]
    labels = next(iter(counts.values())).keys()
    for label in labels:
        cells = []
        for rows in counts.values():
            r, base = rows[label], rows["adamw"]
            cells.append(f"{r['total'] / GB:.2f} ({r['total'] / base['total']:.2f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for name, rows in counts.items():
        base = rows["adamw"]
        lines += ["", f"{name}: {base['trainable_params'] / 1e9:.3f} B parameters\n",
                  "| method | trainable params | weights GB | gradients at peak GB | optimizer state GB | total GB "
                  "| vs adamw |", "|---|---:|---:|---:|---:|---:|---:|"]
        for label, r in rows.items():
            lines.append(f"| {label} | {r['trainable_params'] / 1e6:,.1f} M | {r['weights'] / GB:.3f} | "
                         f"{r['grads'] / GB:.3f} | {r['state'] / GB:.3f} | {r['total'] / GB:.3f} | "
                         f"{r['total'] / base['total']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["all"])
    ap.add_argument("--json", help="also write the raw counts (bytes) here")
    ap.add_argument("--activations", action="store_true", help="also measure activation memory (~30 s a model)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=2048)
    args = ap.parse_args(argv)
    models = list(REGISTRY) if args.models == ["all"] else args.models
    counts = count_all(models, {**STANDARD_METHODS, **LEVERS})
    print(render(counts))
    result = {"counts": counts}
    if args.activations:
        result["activations"] = {n: {"plain": activation_bytes(n, args.batch, args.seq, False),
                                     "checkpointing": activation_bytes(n, args.batch, args.seq, True),
                                     "chunked": activation_bytes(n, args.batch, args.seq, True, LOSS_CHUNK)}
                                 for n in models}
        print("\n" + render_activations(result["activations"], args.batch, args.seq))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
