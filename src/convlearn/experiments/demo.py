"""`convlearn demo`: the embedded default, offline on CPU.

Builds a tiny Qwen2-architecture twin, reads the chatterbot corpus through the normalization rules, prepares
(renders and tokenizes) it with the twin's chat template, continues training it with GaLore (layer-wise),
and prints what each stage produced, ending with held-out perplexity before and after.
"""
from __future__ import annotations

import json
import time
from pathlib import Path


def demo_config(out: Path, model_dir: Path):
    from ..config import load_config
    return load_config(None, [
        f"model.name={model_dir}", "data.sources=[{path: chatterbot}]", "data.heldout_fraction=0.1",
        f"data.cache_dir={out / 'cache'}", "render.max_seq_len=256", f"output_dir={out / 'galore'}",
        "method.name=galore", "method.rank=32", "method.update_proj_gap=50", "method.layerwise=true",
        "train.max_steps=150", "train.batch_size=8", "train.lr=0.003", "train.warmup_steps=10",
        "train.save_every=0", "eval.schedule=[{step: 0, suite: quick}, {step: 50, suite: quick}, "
        "{step: 100, suite: quick}]", "eval.final_suite=quick", "eval.suites.quick=[conversation_ppl]"])


def run_demo(out: str | Path) -> None:
    from ..data.inspect import format_stats, inspect_source
    from ..data.prepare import prepare
    from ..models import load_tokenizer, model_spec
    from ..tiny import build_tiny_model
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    model_dir = out / "tiny-qwen2"
    print(f"[1/3] building a tiny Qwen2 twin in {model_dir} ...", flush=True)
    if not (model_dir / "config.json").is_file():
        build_tiny_model("qwen2", model_dir, seed=0)

    print("[2/4] reading the chatterbot corpus ...", flush=True)
    print(format_stats(inspect_source("chatterbot"), "chatterbot (bundled corpus)"))

    print("[3/4] rendering and tokenizing with the model's chat template ...", flush=True)
    cfg = demo_config(out, model_dir)
    tok = load_tokenizer(cfg.model.name)
    prepared = prepare(cfg, tok, model_spec(cfg.model.name), progress=True)
    train = prepared.dataset("train")
    print(f"  cache: {prepared.path}")
    print(f"  train samples {prepared.meta['train_rows']:,}, held-out samples {prepared.meta['heldout_rows']:,}")
    print(f"  render: {json.dumps(prepared.meta['render'])}")
    row = train[0]
    shown = "".join(f"[{tok.decode([i])}]" if m else tok.decode([i])
                    for i, m in zip(row["input_ids"], row["assistant_mask"]))
    print(f"  first sample ({len(row['input_ids'])} tokens; assistant tokens in [brackets]):\n{shown}")

    print("[4/4] continual training with layer-wise GaLore (r=32) ...", flush=True)
    from .run import run_training
    run_dir = Path(cfg.output_dir)
    if run_dir.exists():
        import shutil
        shutil.rmtree(run_dir)
    summary = run_training(cfg, run_dir)
    evals = sorted((run_dir / "evals").glob("step-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    print("  step | held-out loss | perplexity | bits/byte")
    for path in evals:
        e = json.loads(path.read_text())
        a = e["evaluations"]["conversation_ppl"]["all"]
        print(f"  {e['step']:>4} | {a['loss']:13.3f} | {a['ppl']:10.1f} | {a['bits_per_byte']:.3f}")
    print(f"  {summary['steps']} steps, {summary['tokens']:,} tokens, {summary['mean_tokens_per_s']:,.0f} tokens/s, "
          f"optimizer state {summary['peak_memory']['optimizer_state_bytes'] / 2**20:.1f} MiB")
    print(f"done in {time.perf_counter() - t0:.1f} s; outputs in {out}")
