"""`convlearn demo`: the embedded default, offline on CPU.

Builds a tiny Qwen2-architecture twin, reads the chatterbot corpus through the normalization rules, prepares
(renders and tokenizes) it with the twin's chat template, and prints what each stage produced.
"""
from __future__ import annotations

import json
import time
from pathlib import Path


def demo_config(out: Path, model_dir: Path):
    from ..config import load_config
    return load_config(None, [
        f"model.name={model_dir}", "data.sources=[{path: chatterbot}]", "data.heldout_fraction=0.1",
        f"data.cache_dir={out / 'cache'}", "render.max_seq_len=256", f"output_dir={out}"])


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

    print("[2/3] reading the chatterbot corpus ...", flush=True)
    print(format_stats(inspect_source("chatterbot"), "chatterbot (bundled corpus)"))

    print("[3/3] rendering and tokenizing with the model's chat template ...", flush=True)
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
    print(f"done in {time.perf_counter() - t0:.1f} s; outputs in {out}")
