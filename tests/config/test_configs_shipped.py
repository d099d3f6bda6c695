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
