"""The performance benchmarks run end to end: the GPU script as a CPU dry run, the memory table at real shapes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_script_dry_run_on_cpu_writes_every_result(tmp_path):
    script = ROOT / "benchmarks" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {**os.environ, "DRY_RUN": "1", "RESULTS": str(tmp_path), "PYTHON": sys.executable}
    run = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    res = json.loads((tmp_path / "memory-Qwen2.5-0.5B-Instruct.json").read_text())
    rows = res["methods"]
    assert len(rows) == 10
    # bitsandbytes' 8-bit optimizer needs CUDA: that row reports why it failed, the others ran.
    assert "needs a CUDA GPU" in rows["galore8bit r=128"]["error"]
    ok = {k: v for k, v in rows.items() if "error" not in v}
    assert len(ok) == 9 and all(v["step_s"] > 0 and v["counted"]["total"] > 0 for v in ok.values())
    # The dry run's model is the real Qwen2 architecture at toy size: layer-wise holds less than AdamW.
    assert ok["galore r=128 layer-wise"]["counted"]["total"] < ok["adamw"]["counted"]["total"]
    assert res["activations"]["checkpointing"] == 0  # no CUDA memory counters on the CPU
    # q, o | k, v | gate, up | down, in two layers
    assert res["refresh"]["shapes"] == {"64x64": 4, "32x64": 4, "128x64": 4, "64x128": 2}
    assert all(res["refresh"][k] > 0 for k in ("svd_s", "randomized_s", "warm_s"))
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert set(speed["methods"]) == {"adamw", "lora r=64", "galore r=256", "galore r=128",
                                     "galore r=128 layer-wise"}
    assert speed["methods"]["galore r=128"]["refresh_warm_s"] > 0
    assert speed["methods"]["adamw"]["refresh_warm_s"] is None
    accum = json.loads((tmp_path / "speed-accum4.json").read_text())
    assert accum["accum"] == 4 and set(accum["methods"]) == set(speed["methods"])
    ckpt = json.loads((tmp_path / "memory-checkpointing-Qwen2.5-0.5B-Instruct.json").read_text())
    assert ckpt["checkpointing"] is True and len(ckpt["methods"]) == 10
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("| galore r=128 layer-wise |") == 4  # two memory tables, two speed tables
    assert "torch" in (tmp_path / "log.txt").read_text() and "failed" not in (tmp_path / "log.txt").read_text()
    assert len(list(tmp_path.iterdir())) <= 8  # what a lent GPU machine sends back


def test_memory_table_prints_every_model_and_method(tmp_path):
    out = tmp_path / "counts.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    counts = json.loads(out.read_text())["counts"]
    assert len(counts) == 5 and all(len(rows) == 11 for rows in counts.values())
    qwen = counts["Qwen/Qwen2.5-1.5B-Instruct"]
    assert qwen["adamw"]["total"] == 8 * 1_543_714_304 + 4 * 338
    assert "| layer-wise r=128 + embeddings frozen | 1.25 (0.32) | 3.65 (0.30) |" in run.stdout
