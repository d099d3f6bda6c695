"""Replay: the realised ratio, reservoir sampling, and exact resume of a replaying run through the CLI."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from convlearn.train.replay import ReplayMixer


@pytest.mark.parametrize("ratio", [0.1, 0.2])
def test_replay_realises_its_ratio_within_sampling_error(ratio):
    mixer = ReplayMixer(ratio, seed=3, original_size=1000, source="original")
    slots = [kind for _ in range(500) for kind, _ in mixer.plan(8)]
    realised = sum(k == "original" for k in slots) / len(slots)
    sigma = (ratio * (1 - ratio) / len(slots)) ** 0.5
    assert abs(realised - ratio) < 3 * sigma and mixer.realised_ratio == realised


def test_reservoir_is_a_uniform_sample_of_everything_seen():
    counts = np.zeros(1000)
    for seed in range(300):
        mixer = ReplayMixer(0.5, seed=seed, reservoir_size=50, source="reservoir")
        for i in range(1000):
            mixer.offer(i)
        assert len(mixer.reservoir) == 50 and len(set(mixer.reservoir)) == 50
        counts[mixer.reservoir] += 1
    decile_share = counts.reshape(10, 100).sum(1) / counts.sum()
    assert np.allclose(decile_share, 0.1, atol=0.02)  # early and late items equally likely


def test_mixer_state_round_trip_continues_identically():
    a = ReplayMixer(0.3, seed=1, original_size=50, reservoir_size=20, source="both")
    for i in range(40):
        a.plan(4)
        a.offer(i)
    b = ReplayMixer(0.3, seed=1, original_size=50, reservoir_size=20, source="both")
    b.load_state(json.loads(json.dumps(a.state())))
    assert [a.plan(4) for _ in range(10)] == [b.plan(4) for _ in range(10)]


def test_replaying_run_resumes_exactly_and_logs_its_ratio(tmp_path, tiny_models):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""
model: {{name: "{tiny_models['qwen2']}"}}
data: {{sources: [{{path: chatterbot}}], heldout_fraction: 0.1, cache_dir: "{tmp_path / 'cache'}"}}
render: {{max_seq_len: 96}}
method: {{name: galore, rank: 8, update_proj_gap: 5}}
train: {{max_steps: 16, batch_size: 4, lr: 0.003, save_every: 4}}
replay: {{ratio: 0.25, source: both, reservoir_size: 16, original: {{path: python-docstrings, format: text, limit: 300}}}}
eval:
  schedule: [{{step: 0, suite: o}}]
  final_suite: o
  suites: {{o: [original_ppl]}}
  original: {{path: python-docstrings, format: text, limit: 300}}
logging: {{progress: false}}
""")

    def run(out, *extra, wait=True):
        args = [sys.executable, "-m", "convlearn", "train", str(cfg), "--out", str(out), *extra]
        return subprocess.run(args, capture_output=True, text=True) if wait else subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def metrics(out):
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    ref = run(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    m = metrics(tmp_path / "ref")
    last = m[-1]["replay"]
    assert last["original"] + last["reservoir"] + last["new"] == 16 * 4
    assert last["original"] > 0 and last["reservoir"] > 0
    assert last["realised_ratio"] == (last["original"] + last["reservoir"]) / 64
    proc = run(tmp_path / "killed", wait=False)
    path = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= 6:
            break
        time.sleep(0.005)
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert run(tmp_path / "killed", "--resume").returncode == 0
    assert [r["loss"] for r in metrics(tmp_path / "killed")] == [r["loss"] for r in m]
    assert [r["replay"] for r in metrics(tmp_path / "killed")] == [r["replay"] for r in m]
    # the original-distribution evaluation never scores a document that replay can draw
    ev = json.loads((tmp_path / "ref" / "evals" / "step-0.json").read_text())["evaluations"]["original_ppl"]
    assert 0 < ev["samples"] < 60
