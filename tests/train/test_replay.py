"""Replay: the realised ratio, reservoir sampling, and exact resume of a replaying run through the CLI."""
import json

import numpy as np
import pytest

from convlearn.train.replay import ReplayMixer
from helpers import kill_after_steps, metrics, run_config, train


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


@pytest.mark.slow
def test_replaying_run_resumes_exactly_and_logs_its_ratio(tmp_path, tiny_models):
    docstrings = {"path": "python-docstrings", "format": "text", "limit": 300}
    cfg = run_config(tmp_path / "run.yaml", tiny_models["qwen2"], tmp_path / "cache",
                     train={"max_steps": 16, "save_every": 4},
                     replay={"ratio": 0.25, "source": "both", "reservoir_size": 16, "original": docstrings},
                     eval={"suites": {"o": ["original_ppl"]}, "schedule": [{"step": 0, "suite": "o"}],
                           "final_suite": "o", "original": docstrings})
    ref = train(cfg, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    m = metrics(tmp_path / "ref")
    last = m[-1]["replay"]
    assert last["original"] + last["reservoir"] + last["new"] == 16 * 4
    assert last["original"] > 0 and last["reservoir"] > 0
    assert last["realised_ratio"] == (last["original"] + last["reservoir"]) / 64
    kill_after_steps(train(cfg, tmp_path / "killed", wait=False), tmp_path / "killed", 6)
    assert train(cfg, tmp_path / "killed", "--resume").returncode == 0
    assert [r["loss"] for r in metrics(tmp_path / "killed")] == [r["loss"] for r in m]
    assert [r["replay"] for r in metrics(tmp_path / "killed")] == [r["replay"] for r in m]
    # the original-distribution evaluation never scores a document that replay can draw
    ev = json.loads((tmp_path / "ref" / "evals" / "step-0.json").read_text())["evaluations"]["original_ppl"]
    assert 0 < ev["samples"] < 60
