import re
import subprocess
import sys


def test_demo_runs_end_to_end(tmp_path):
    res = subprocess.run([sys.executable, "-m", "convlearn", "demo", "--out", str(tmp_path / "demo")],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "kept:          898 conversations" in out
    assert "train samples" in out and "[<|im_end|>]" in out
    assert (tmp_path / "demo" / "tiny-qwen2" / "model.safetensors").is_file()
    rows = re.findall(r"^\s+(\d+) \|\s+([\d.]+) \|", out, flags=re.M)
    steps = [int(s) for s, _ in rows]
    losses = [float(x) for _, x in rows]
    assert steps == [0, 50, 100, 150]
    assert losses[-1] < losses[0] - 3  # the twin learns the corpus (8.4 -> 2.5 nats/token measured)
