"""Golden losses: the per-step losses of a short seeded run of every training method that runs on CPU, against
numbers recorded from the code (as torchtune's recipe tests do). The other tests compare methods with each other
or check that losses fall; a change that shifts every method alike passes them, not this.

GOLDEN is updated on purpose only, when a change is meant to change the numbers (say so in the commit). To
regenerate: `CONVLEARN_GOLDEN_UPDATE=1 pytest -q -s tests/test_golden_losses.py` prints each method's
`"name": [...],` entry instead of asserting (apollo's need apollo-torch installed); paste them over GOLDEN's.

Every registered method is either here or in LEFT_OUT with its reason (test_every_method_has_golden_losses):
galore8bit is left out, bitsandbytes' 8-bit optimizers need CUDA. apollo and apollo_mini run only where the
optional apollo-torch package (CC-BY-NC) is installed; otherwise they skip and say why.
"""
import importlib.util
import os

import pytest
import torch

from helpers import cli_here, metrics, run_config

# One config per method: the tiny Qwen2 twin, chatterbot, 6 steps of batch 4 x 96 tokens, fp32, no evaluation.
# GaLore's rank 8 and gap 5 (run_config's) put a projector refresh at steps 1 and 6.
METHODS = {
    "adamw": {"method": {"name": "adamw"}},
    "adamw-layerwise": {"method": {"name": "adamw", "layerwise": True, "layerwise_clipping": "per_tensor"}},
    "lora": {"method": {"name": "lora", "lora_rank": 8, "lora_alpha": 16}, "train": {"lr": 0.01}},
    "galore": {"method": {"name": "galore"}},
    "galore-layerwise": {"method": {"name": "galore", "layerwise": True}},
    # replay changes the batches (a quarter of the samples from docstrings), so it gets its own numbers
    "galore-layerwise-replay": {"method": {"name": "galore", "layerwise": True},
                                "replay": {"ratio": 0.25,
                                           "original": {"path": "python-docstrings", "format": "text", "limit": 50}}},
    "apollo": {"method": {"name": "apollo"}},
    "apollo_mini": {"method": {"name": "apollo_mini"}},
}
APOLLO = ("apollo", "apollo_mini")  # optional: they skip where apollo-torch is not installed
LEFT_OUT = {"galore8bit": "bitsandbytes' 8-bit optimizers need CUDA (on CPU the run exits 2: test_train.py)"}

GOLDEN = {  # recorded 2026-12, torch 2.13.0+cpu, 1 thread (AVX2 CPU)
    "adamw": [8.387749233128835, 8.06406955544008, 7.5709295099431815,
              7.143989240619498, 6.923432232582406, 6.570019020851481],
    "adamw-layerwise": [8.387749233128835, 8.064062835973337, 7.572986949573863,
                        7.150305519641285, 6.9318826753799225, 6.595812435349521],
    "lora": [8.387749233128835, 8.106760007525804, 8.002312677556818,
             7.893753266670335, 8.19032768354024, 7.855183777493467],
    "galore": [8.387749233128835, 7.984592262758028, 7.587649258700284,
               7.158939415300396, 6.901676125722389, 6.545658124863894],
    "galore-layerwise": [8.387749233128835, 7.984592262758028, 7.587649258700284,
                         7.158939415300396, 6.901676125722389, 6.545658124863894],
    "galore-layerwise-replay": [8.387749233128835, 8.05409578022204, 7.597382931592988,
                                7.684720619717527, 7.106607348893461, 6.885514976334398],
    "apollo": [8.387749233128835, 8.01798801247133, 7.485889226740057,
               7.104234292473592, 6.859747063623716, 6.523582112913763],
    "apollo_mini": [8.387749233128835, 8.123007678110666, 7.614700039950284,
                    7.239973041373239, 6.999893815550085, 6.660667924515462],
}

# Matmul reductions are split by thread: at 2 threads GaLore's step-4 loss moves by 4e-7. One thread makes the
# numbers bit-identical run to run and whatever the machine's core count (the whole file takes seconds anyway).
THREADS = 1
UPDATE = os.environ.get("CONVLEARN_GOLDEN_UPDATE") == "1"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("golden")  # one data cache for every method: prepared once


@pytest.fixture
def pinned_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", list(METHODS))
def test_golden_losses(name, root, tiny_models, pinned_threads):
    if name in APOLLO and importlib.util.find_spec("apollo_torch") is None:
        pytest.skip("apollo-torch (optional extra, CC-BY-NC) is not installed: pip install 'convlearn[apollo]'")
    sections = {"train": {"precision": "fp32"}, "eval": {"schedule": [], "final_suite": None}}
    for key, values in METHODS[name].items():
        sections[key] = {**sections.get(key, {}), **values}
    cfg = run_config(root / f"{name}.yaml", tiny_models["qwen2"], root / "cache", **sections)
    res = cli_here("train", cfg, "--out", root / name)
    assert res.returncode == 0, res.stderr[-3000:]
    m = metrics(root / name)
    assert [r["step"] for r in m] == list(range(1, 7))
    losses = [r["loss"] for r in m]
    if UPDATE:
        head = f'    "{name}": ['  # paste-ready, three per line (ruff's 120 columns)
        print(f"\n{head}{', '.join(map(repr, losses[:3]))},\n{' ' * len(head)}{', '.join(map(repr, losses[3:]))}],")
        return
    assert losses == pytest.approx(GOLDEN[name], abs=1e-4, rel=0), name


def test_every_method_has_golden_losses():
    from convlearn.train.methods import method_names
    covered = {cfg["method"]["name"] for cfg in METHODS.values()}
    assert set(method_names()) == covered | set(LEFT_OUT), "a new method needs its GOLDEN entry (or a LEFT_OUT reason)"
    assert set(GOLDEN) == set(METHODS)
