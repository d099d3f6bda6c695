import subprocess
import sys


def test_demo_runs_end_to_end(tmp_path):
    res = subprocess.run([sys.executable, "-m", "convlearn", "demo", "--out", str(tmp_path / "demo")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "kept:          898 conversations" in out
    assert "train samples" in out and "[<|im_end|>]" in out
    assert (tmp_path / "demo" / "tiny-qwen2" / "model.safetensors").is_file()
