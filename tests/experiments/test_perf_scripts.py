"""The performance benchmarks run end to end: the GPU script as a CPU dry run, the memory table at real shapes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_script_dry_run_on_cpu_writes_every_result(tmp_path):
    script = ROOT / "benchmarks" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {**os.environ, "DRY_RUN": "1", "RESULTS": str(tmp_path), "PYTHON": sys.executable}
    run = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    res = json.loads((tmp_path / "memory-Qwen2.5-0.5B-Instruct.json").read_text())
    rows = res["methods"]
    assert len(rows) == 11 and res["precision"] == "fp32"
    # bitsandbytes' 8-bit optimizer needs CUDA: that row reports why it failed, the others ran.
    assert "needs a CUDA GPU" in rows["galore8bit r=128"]["error"]
    ok = {k: v for k, v in rows.items() if "error" not in v}
    assert len(ok) == 10 and all(v["step_s"] > 0 and v["counted"]["total"] > 0 for v in ok.values())
    # The dry run's model is the real Qwen2 architecture at toy size: layer-wise holds less than AdamW.
    assert ok["galore r=128 layer-wise"]["counted"]["total"] < ok["adamw"]["counted"]["total"]
    assert res["activations"]["checkpointing"] == 0  # no CUDA memory counters on the CPU
    # q, o | gate, up | down, in two layers (k and v, 128 x 256, are not wider than rank 128: full-rank)
    assert res["refresh"]["shapes"] == {"256x256": 4, "512x256": 4, "256x512": 2}
    assert all(res["refresh"][k] > 0 for k in ("svd_s", "randomized_s", "warm_s"))
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert set(speed["methods"]) == {"adamw", "adamw layer-wise", "lora r=64", "galore r=256", "galore r=128",
                                     "galore r=128 layer-wise"}
    assert speed["methods"]["galore r=128"]["refresh_warm_s"] > 0
    assert speed["methods"]["adamw"]["refresh_warm_s"] is None
    assert all(len(m["times"]) == 10 for m in speed["methods"].values())  # >= 10 samples, random order
    lo, hi = speed["methods"]["galore r=128"]["vs_adamw_interval"]
    assert 0 < lo <= hi
    opt = speed["methods"]["galore r=128"]["optimizer"]
    assert opt["floor_s"] > 0 and opt["step_over_floor"] > 0
    accum = json.loads((tmp_path / "speed-accum4.json").read_text())
    assert accum["accum"] == 4 and set(accum["methods"]) == set(speed["methods"])
    ckpt = json.loads((tmp_path / "memory-checkpointing-Qwen2.5-0.5B-Instruct.json").read_text())
    assert ckpt["checkpointing"] is True and len(ckpt["methods"]) == 11
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("| galore r=128 layer-wise |") == 4  # two memory tables, two speed tables
    assert "torch" in (tmp_path / "log.txt").read_text() and "failed" not in (tmp_path / "log.txt").read_text()
    assert len(list(tmp_path.iterdir())) <= 8  # what a lent GPU machine sends back


def test_memory_table_prints_every_model_and_method(tmp_path):
    out = tmp_path / "counts.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    res = json.loads(out.read_text())
    assert set(res["counts"]) == {"bf16-mixed", "bf16"}
    for precision, counts in res["counts"].items():
        assert len(counts) == 5 and all(len(rows) == 13 for rows in counts.values())
    mixed, pure = (res["counts"][p]["Qwen/Qwen2.5-1.5B-Instruct"] for p in ("bf16-mixed", "bf16"))
    assert mixed["adamw"]["total"] == 16 * 1_543_714_304 + 4 * 338  # fp32 weights, gradients, two moments
    assert pure["adamw"]["total"] == 8 * 1_543_714_304 + 4 * 338
    # the headline is the peak of a step (state + activations at 1 x 2048 + autocast copies), first in the output
    assert run.stdout.startswith("Peak memory of a training step (bf16-mixed")
    assert "| galore r=128 layer-wise | 5.45 (0.61, 0.72) | 13.86 (0.50, 0.61) |" in run.stdout
    peak = res["peak"]["bf16-mixed"]["Qwen/Qwen2.5-1.5B-Instruct"]
    copies = peak["galore r=128 layer-wise"] - mixed["galore r=128 layer-wise"]["total"] - \
        res["activations"]["Qwen/Qwen2.5-1.5B-Instruct"]["chunked"]
    assert 1.99 * 1_543_714_304 < copies < 2 * 1_543_714_304  # bf16 copies of every Linear weight (not norms)
    # a projected embedding's refresh: a full SVD needs the m x n U, a warm one thin products only
    t = mixed["layer-wise r=128 + embeddings projected"]["refresh"]
    assert t["weight"] == "151936x1536" and t["svd"] > 4 * 151936 * 1536 > 3 * t["warm"]
