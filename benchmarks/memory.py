"""Training-state memory of every method at the seed models' real shapes, counted on the meta device.

    python benchmarks/memory.py [--models all|ID ...] [--json FILE]

No weights are downloaded and nothing is allocated: each model is built from the registry's architecture
facts on the meta device in bf16 (what a GPU run uses), and `convlearn.train.memory.count_memory` counts the
bytes of weights, gradients at their peak and optimizer state (projectors included) each method holds.
Activations are not in these figures (they depend on batch and sequence length; see BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import json

from convlearn.models import REGISTRY, meta_model
from convlearn.train.memory import LEVERS, STANDARD_METHODS, count_memory, method_config

GB = 1e9


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
    args = ap.parse_args(argv)
    models = list(REGISTRY) if args.models == ["all"] else args.models
    counts = count_all(models, {**STANDARD_METHODS, **LEVERS})
    print(render(counts))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(counts, f, indent=1)


if __name__ == "__main__":
    main()
