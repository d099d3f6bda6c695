import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    """The shortened demo (--quick); the full one is measured in BENCHMARKS.md / README."""
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "convlearn", "demo", "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "## Verdicts against the success criteria" in res.stdout
    verdicts = json.loads((out / "report" / "verdicts.json").read_text())
    assert verdicts["runs"] == ["adamw", "lora-r16", "galore-r32", "galore-r32-replay10"]
    for point, v in verdicts["criteria"].items():
        assert v["conversation_ppl"]["verdict"] in ("pass", "fail")
        assert v["mmlu"]["verdict"] in ("pass", "fail")  # measured: docstring benchmark in MMLU's schema
    assert verdicts["criteria"]["galore-r32"]["memory"]["verdict"] in ("pass", "fail")
    assert {"learning_curves.png", "forgetting.png", "memory_speed.png"} <= set(verdicts["plots"])
    assert (out / "report" / "figures.csv").is_file() and (out / "base" / "tokenizer.json").is_file()
