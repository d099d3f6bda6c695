from pathlib import Path

import pytest

from convlearn.config import load_config

ROOT = Path(__file__).resolve().parents[1]
# run configs (sweep files under configs/experiments are checked in test_experiments.py)
CONFIGS = sorted([*(ROOT / "configs").glob("*.yaml"), *(ROOT / "configs" / "tiny").glob("*.yaml"),
                  ROOT / "configs" / "experiments" / "tiny" / "base.yaml"])


def test_there_are_shipped_configs():
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.data.sources and cfg.model.name
