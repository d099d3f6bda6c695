"""What evaluation costs on a tiny CPU model: the quick suite (held-out conversation perplexity) over
1,000 held-out conversations, and the other perplexity evaluations, each timed as the eval JSON records it.

    python benchmarks/eval_cost.py [--conversations 1000] [--arch qwen2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main(argv=None) -> None:
    from convlearn.config import load_config
    from convlearn.data.prepare import prepare
    from convlearn.eval.suites import RunEvaluator
    from convlearn.models import load_model, load_tokenizer, model_spec
    from convlearn.tiny import build_tiny_model
    from data_throughput import generate
    ap = argparse.ArgumentParser()
    ap.add_argument("--conversations", type=int, default=1000)
    ap.add_argument("--arch", default="qwen2")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--source", choices=["lmsys", "chatterbot"], default="lmsys",
                    help="LMSYS-shaped generated conversations (~720 tokens) or the bundled corpus (~80)")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="convlearn-evalcost-"))
    data = tmp / "lmsys.jsonl"
    if args.source == "lmsys":
        generate(data, int(args.conversations * 1.1), seed=1)
    else:
        data = "chatterbot"
    model_dir = build_tiny_model(args.arch, tmp / "model")
    cfg = load_config(None, [
        f"model.name={model_dir}", f"data.sources=[{{path: {data}}}]", "data.heldout_fraction=0.95",
        f"data.cache_dir={tmp / 'cache'}", "render.max_seq_len=2048", "eval.heldout_samples=null",
        f"eval.batch_size={args.batch_size}", "eval.original={path: python-docstrings, limit: 500}",
        "eval.suites.ppl=[conversation_ppl, domain_ppl, original_ppl]", "eval.schedule=[]", "eval.final_suite=null"])
    tok = load_tokenizer(str(model_dir))
    prepared = prepare(cfg, tok, model_spec(str(model_dir)), progress=False)
    ev = RunEvaluator.for_run(cfg, tok, model_spec(str(model_dir)), prepared, tmp / "run")
    model = load_model(str(model_dir)).eval()
    ev.original()  # tokenized once per run; timed below as part of the first original_ppl
    for suite in ("quick", "ppl"):
        t = time.perf_counter()
        record = ev.run(model, 0, suite)
        total = time.perf_counter() - t
        conv = record["evaluations"]["conversation_ppl"]
        print(f"suite {suite}: {total:.2f} s in all; per evaluation {record['seconds']}")
        print(f"  held-out: {conv['samples']:,} samples from {prepared.meta['data']['heldout']:,} conversations, "
              f"{conv['all']['tokens']:,} target tokens "
              f"({conv['all']['tokens'] / record['seconds']['conversation_ppl']:,.0f}"
              f" tokens/s)")


if __name__ == "__main__":
    main()
