"""Memory of every method at the seed models' real shapes: peak of a training step first, training state second,
in the precision a GPU trains with (bf16-mixed) and in opt-in pure bf16; counted on the meta device.

    python benchmarks/memory.py [--models all|ID ...] [--precision bf16-mixed bf16] [--json FILE]
                                [--activations --batch 1 --seq 2048]

No weights are downloaded and nothing is allocated: each model is built from the registry's architecture facts
on the meta device (fp32 master weights for bf16-mixed, bf16 for pure bf16) and each method counts the bytes of
weights, gradients at their peak and optimizer state (projectors included) it holds (train/methods/).

Peak memory of a step = training state + activations + (bf16-mixed) the bf16 copies autocast makes of the fp32
Linear weights, which live from their use in forward until backward frees them (2 bytes per Linear weight; an
upper bound: with activation checkpointing they are made again in backward). `--activations` measures the
activations at the seed's settings (batch x seq, activation checkpointing, the loss in chunks of 1024 tokens):
the forward runs on fake tensors (no storage, no compute) under torch's MemTracker, which records every tensor's
bytes; the activation memory is what forward leaves alive for backward. Without `--activations` the last
measured figures (benchmarks/results/memory-real-shapes.json) are used.

Refresh transients: a projector refresh of a projected embedding (`method.embeddings=project`) needs memory of
its own for a moment. Counted per refresh method for the largest projected weight: `svd` the gradient in fp32
(a copy when it is bf16) plus U (m x min(m, n)) and Vh; `randomized` / `warm` thin products only ((m + n) x
(r + 8) in fp32, three of them).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from convlearn.models import REGISTRY, meta_model
from convlearn.precision import resolve_precision
from convlearn.train.memory import LEVERS, STANDARD_METHODS, method_config
from convlearn.train.methods import count_memory
from convlearn.train.params import galore_parameters

GB = 1e9
LOSS_CHUNK = 1024  # train.loss_chunk_tokens measured beside checkpointing
PRECISIONS = ("bf16-mixed", "bf16")  # the GPU modes (precision.py)
LAST = Path(__file__).parent / "results" / "memory-real-shapes.json"
# The rows: every CPU/GPU method, the levers, and the layer-wise comparisons.
ROWS = {**STANDARD_METHODS, **LEVERS,
        "galore r=128 layer-wise per-tensor clip": STANDARD_METHODS["galore r=128 layer-wise"] + [
            "method.layerwise_clipping=per_tensor"]}


def count_all(models: list[str], rows: dict[str, list[str]], precision: str) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for name in models:
        model, spec = meta_model(name, dtype=resolve_precision(precision, "cuda").weight_dtype), REGISTRY[name]
        out[name] = {}
        for label, overrides in rows.items():
            method = method_config(overrides)
            targets = method.target_modules or list(spec.facts.target_modules)
            out[name][label] = count_memory(model, method, targets, precision).as_dict()
            out[name][label]["refresh"] = refresh_transients(model, method, targets, precision)
    return out


def autocast_copies(name: str, method) -> int:
    """bf16 copies autocast makes of the fp32 Linear weights (the output head included) in forward: frozen
    weights are held in bf16 under bf16-mixed (a LoRA base, frozen embeddings) and need none."""
    import torch
    if method.name == "lora":
        return 0
    model = meta_model(name, dtype=torch.float32)
    frozen = {id(model.get_output_embeddings().weight)} if method.embeddings == "freeze" else set()
    seen, total = set(frozen), 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += 2 * module.weight.numel()
    return total


def refresh_transients(model, method, targets, precision: str) -> dict | None:
    """Bytes a refresh of the largest projected weight needs beyond the state, per refresh method."""
    if method.name not in ("galore", "galore8bit"):
        return None
    projected, _, _ = galore_parameters(model, targets, method.embeddings, method.rank)
    if not projected:
        return None
    p = max(projected, key=lambda t: t.numel())
    m, n = p.shape
    k = min(method.rank + 8, m, n)
    copy = 4 * m * n if p.dtype != __import__("torch").float32 else 0
    return {"weight": f"{m}x{n}", "svd": copy + 4 * (m * min(m, n) + min(m, n) + min(m, n) * n),
            "randomized": 4 * 3 * (m + n) * k, "warm": 4 * 3 * (m + n) * k}


def activation_bytes(name: str, batch: int, seq: int, checkpointing: bool, loss_chunk: int = 0) -> int:
    """Bytes the forward pass of a training step keeps for backward, measured on fake tensors (bf16 compute)."""
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


def peaks(counts: dict, acts: dict, precision: str) -> dict[str, dict[str, int]]:
    """Peak bytes of a step per model and row: training state + activations (+ autocast's weight copies)."""
    out: dict[str, dict[str, int]] = {}
    for name, rows in counts.items():
        out[name] = {}
        for row, r in rows.items():
            copies = autocast_copies(name, method_config(ROWS[row])) if precision == "bf16-mixed" else 0
            out[name][row] = r["total"] + acts[name] + copies
    return out


def render_peak(peak: dict, precision: str, batch: int, seq: int) -> str:
    """The headline: peak of a step at the seed's settings, and the ratio to AdamW and to layer-wise AdamW."""
    lines = [f"Peak memory of a training step ({precision}; batch {batch} x {seq} tokens, activation checkpointing, "
             f"the loss in chunks of {LOSS_CHUNK}): training state + activations"
             + (" + autocast's bf16 weight copies" if precision == "bf16-mixed" else "")
             + ", GB, with its ratio to AdamW and (GaLore, layer-wise rows) to layer-wise AdamW\n",
             "| method | " + " | ".join(n.split("/")[1] for n in peak) + " |", "|---|" + "---:|" * len(peak)]
    for label in next(iter(peak.values())):
        cells = []
        for rows in peak.values():
            vs_lw = f", {rows[label] / rows['adamw layer-wise']:.2f}" \
                if "layer-wise" in label and label != "adamw layer-wise" else ""
            cells.append(f"{rows[label] / GB:.2f} ({rows[label] / rows['adamw']:.2f}{vs_lw})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_state(counts: dict, precision: str) -> str:
    lines = [f"Training state (weights + gradients at peak + optimizer state), {precision}, GB, and its ratio to "
             "AdamW\n", "| method | " + " | ".join(n.split("/")[1] for n in counts) + " |",
             "|---|" + "---:|" * len(counts)]
    for label in next(iter(counts.values())):
        cells = [f"{rows[label]['total'] / GB:.2f} ({rows[label]['total'] / rows['adamw']['total']:.2f})"
                 for rows in counts.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_detail(counts: dict, precision: str) -> str:
    lines = []
    for name, rows in counts.items():
        base = rows["adamw"]
        lines += ["", f"{name}, {precision}: {base['trainable_params'] / 1e9:.3f} B parameters\n",
                  "| method | trainable params | weights GB | gradients at peak GB | optimizer state GB | total GB "
                  "| vs adamw | refresh transient GB: svd / warm |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, r in rows.items():
            t = r.get("refresh")
            refresh = f"{t['svd'] / GB:.2f} / {t['warm'] / GB:.3f} ({t['weight']})" if t else "-"
            lines.append(f"| {label} | {r['trainable_params'] / 1e6:,.1f} M | {r['weights'] / GB:.3f} | "
                         f"{r['grads'] / GB:.3f} | {r['state'] / GB:.3f} | {r['total'] / GB:.3f} | "
                         f"{r['total'] / base['total']:.3f} | {refresh} |")
    return "\n".join(lines)


def render_activations(acts: dict[str, dict[str, int]], batch: int, seq: int) -> str:
    lines = [f"Activation memory of one training step (what forward keeps for backward), batch {batch} x {seq} "
             "tokens, bf16, GB\n", "| model | no checkpointing | activation checkpointing | saved | checkpointing "
             f"+ loss in chunks of {LOSS_CHUNK} tokens | saved |", "|---|---:|---:|---:|---:|---:|"]
    for name, a in acts.items():
        lines.append(f"| {name.split('/')[1]} | {a['plain'] / GB:.2f} | {a['checkpointing'] / GB:.2f} | "
                     f"{1 - a['checkpointing'] / a['plain']:.0%} | {a['chunked'] / GB:.2f} | "
                     f"{1 - a['chunked'] / a['plain']:.0%} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["all"])
    ap.add_argument("--precision", nargs="*", default=list(PRECISIONS), choices=list(PRECISIONS))
    ap.add_argument("--json", help="also write the raw counts (bytes) here")
    ap.add_argument("--activations", action="store_true", help="measure activation memory (~30 s a model)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=2048)
    args = ap.parse_args(argv)
    models = list(REGISTRY) if args.models == ["all"] else args.models
    if args.activations:
        acts = {n: {"plain": activation_bytes(n, args.batch, args.seq, False),
                    "checkpointing": activation_bytes(n, args.batch, args.seq, True),
                    "chunked": activation_bytes(n, args.batch, args.seq, True, LOSS_CHUNK)} for n in models}
    else:
        acts = json.loads(LAST.read_text())["activations"]
        if args.batch != 1 or args.seq != 2048:
            ap.error("--batch / --seq other than the recorded 1 x 2048 need --activations")
        if args.models == ["all"]:  # the models the recorded activations cover (a newer registry entry needs
            models = [n for n in models if n in acts]  # --activations once)
    result = {"activations": acts, "batch": args.batch, "seq": args.seq, "counts": {}, "peak": {}}
    for precision in args.precision:
        counts = count_all(models, ROWS, precision)
        result["counts"][precision] = counts
        result["peak"][precision] = peaks(counts, {n: acts[n]["chunked"] for n in models}, precision)
        print(render_peak(result["peak"][precision], precision, args.batch, args.seq))
        print()
        print(render_state(counts, precision))
        print(render_detail(counts, precision))
        print()
    print(render_activations({n: acts[n] for n in models}, args.batch, args.seq))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
