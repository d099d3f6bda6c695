import json
import subprocess
import sys

import pytest

from convlearn.demos.offline import DEMO_METHODS, EXPERIMENTS


@pytest.mark.slow
def test_demo_runs_the_four_experiments_end_to_end(tmp_path):
    """The shortened demo (--quick): every experiment's hypothesis gets a verdict with its figure, the probes
    their control; the full demo is measured in BENCHMARKS.md / README."""
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "convlearn", "demo", "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    summary = (out / "demo.md").read_text()
    assert summary in res.stdout and "accuracy beside its control" in summary
    hypotheses = json.loads((out / "demo.json").read_text())
    canaries = hypotheses.pop("canaries")
    assert list(hypotheses) == list(EXPERIMENTS)
    trained = canaries["adamw"]
    assert trained["against"] == "v0" and trained["controls_flagged"] == 0 and trained["sees"] is not None
    assert "Positive control flagged" in summary
    for name, hyp in hypotheses.items():  # each hypothesis judged, with a figure
        assert hyp["statement"] and hyp["verdicts"], name
        for v in hyp["verdicts"].values():
            assert v["verdict"] in ("pass", "fail", "inconclusive", "not measured", "not measurable") and v["figure"]
    assert hypotheses["replay"]["verdicts"]["replay_10"]["verdict"] != "not measured"  # two seeds per arm
    assert "n=3" in hypotheses["data_scaling"]["verdicts"]["log_linear"]["figure"]  # three sizes
    verdicts = json.loads((out / "runs" / "optimizers" / "report" / "verdicts.json").read_text())
    assert verdicts["runs"] == list(DEMO_METHODS)
    bar = verdicts["thresholds"]["conversation_ppl_change"]
    for point, v in verdicts["criteria"].items():
        lo, hi = v["conversation_ppl"]["interval"]  # the verdict follows from its interval and the bar
        assert v["conversation_ppl"]["verdict"] == ("pass" if hi < bar else "fail" if lo > bar else "inconclusive")
    choice = json.loads((out / "runs" / "optimizers" / "lr_choice.json").read_text())
    assert set(choice["by_label"]) == {"adamw", "lora r=16", "galore r=32 layer-wise embeddings project"}
    assert max(choice["by_label"].values()) <= 0.003  # never above the base's pretraining rate
    figures = (out / "runs" / "optimizers" / "report" / "figures.csv").read_text()
    for run in DEMO_METHODS:  # every probe figure has its control and its clustered lift beside it
        assert f"{run},probe_control_final," in figures and f"{run},probe_lift_p," in figures
    assert {"learning_curves.png", "forgetting.png", "lr_sensitivity.png"} <= set(verdicts["plots"])
    assert (out / "base" / "tokenizer.json").is_file()
