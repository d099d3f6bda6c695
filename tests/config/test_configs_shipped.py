from pathlib import Path

import pytest

from convlearn.config import load_config
from convlearn.experiments.sweep import PACKAGED
from convlearn.train.methods import method_for

ROOT = Path(__file__).resolve().parents[2]
# run configs (sweep files are checked in test_experiments.py)
CONFIGS = sorted([*(ROOT / "configs").glob("*.yaml"), *(ROOT / "configs" / "tiny").glob("*.yaml"),
                  PACKAGED / "tiny" / "base.yaml"])


def test_the_shipped_configs_are_the_documented_ones():
    names = [str(p.relative_to(ROOT)) for p in CONFIGS]
    assert names == ["configs/learn-qwen2.5-0.5b.yaml", "configs/lmsys-qwen2.5-1.5b.yaml", "configs/tiny/adamw.yaml",
                     "configs/tiny/chatterbot-qwen2.yaml", "configs/tiny/galore-layerwise.yaml",
                     "configs/tiny/galore.yaml", "configs/tiny/lora.yaml", "src/convlearn/experiments/tiny/base.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.data.sources and cfg.model.name
    method_for(cfg.method)  # the method and its options too
    if path.name.startswith("learn-"):  # the learner's: what `convlearn learn` resolves it to
        from convlearn.learn.learner import learn_config
        cfg = learn_config(str(path), [])
        assert cfg.method.layerwise and cfg.learn.dir and cfg.eval.criteria.retention_benchmark == "mmlu"
        assert [b.name for b in cfg.eval.benchmarks] == ["mmlu"] and cfg.replay.ratio > 0


SWEEPS = sorted([*(ROOT / "configs" / "experiments").glob("*.yaml"),
                 *(p for p in (PACKAGED / "tiny").glob("*.yaml") if p.name != "base.yaml")])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_builds_its_evaluator(path, tiny_models, tokenizers, monkeypatch, tmp_path):
    """The audit's "real-scale runs stop at step 0": the default `full` suite held mmlu_quick, which cannot run
    without a local MMLU copy, and no real-scale config gave one. Each shipped config's evaluator is built on a
    tiny twin as if online (the hub is stubbed only where a dataset would be downloaded: nothing is built
    before a download here), and every suite it names can run."""
    from huggingface_hub import constants

    from convlearn.eval.suites import RunEvaluator
    from convlearn.models import model_spec
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the user's online run; nothing is fetched here
    cfg = load_config(path, [f"model.name={tiny_models['qwen2']}"])
    ev = RunEvaluator(cfg, tokenizers["qwen2"], model_spec(str(tiny_models["qwen2"])), tmp_path)
    assert ev.ecfg.suites == cfg.eval.suites


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_shipped_experiment_passes_its_suite_check(path):
    from convlearn.experiments.sweep import load_sweep
    assert load_sweep(path).runs


def test_a_suite_that_cannot_run_fails_when_the_config_is_checked(tmp_path, tiny_models):
    """mmlu_quick without a local MMLU copy: one line naming the key, exit 2, before any data is prepared."""
    from helpers import cli_here, run_config
    cfg = run_config(tmp_path / "run.yaml", tiny_models["qwen2"], tmp_path / "cache",
                     eval={"suites": {"quick": ["conversation_ppl"], "full": ["conversation_ppl", "mmlu_quick"]}})
    res = cli_here("train", cfg, "--out", tmp_path / "run")
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "eval.suites.full: mmlu_quick needs an `mmlu` entry with data_dir" in res.stderr
    assert not (tmp_path / "cache").exists()  # before any work
