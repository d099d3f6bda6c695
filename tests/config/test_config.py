import subprocess
import sys
from pathlib import Path

import pytest

from convlearn.config import config_docs, dump_config, load_config
from convlearn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "convlearn", *args], capture_output=True, text=True, cwd=cwd)


def test_defaults_and_overrides_round_trip(tmp_path):
    cfg = load_config(None, ["data.sources.0.limit=5", "render.loss=assistant", "data.languages=[en, de]",
                             "train.lr=1e-5",
                             "render.template_kwargs={date_string: 1 Jan 2025}"])
    assert cfg.model.name == "Qwen/Qwen2.5-1.5B-Instruct"
    assert cfg.data.sources[0].limit == 5 and cfg.render.loss == "assistant" and cfg.train.lr == 1e-5
    assert cfg.data.languages == ["en", "de"] and cfg.render.template_kwargs == {"date_string": "1 Jan 2025"}
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("override,message", [
    (["render.loss=everything"], "render.loss: must be one of all, assistant; got 'everything'"),
    (["data.sources.0.limit=0"], "data.sources[0].limit: must be >= 1; got 0"),
    (["model.nme=x"], "model.nme: unknown key"),
    (["data.sources=[]"], "data.sources: needs at least one source"),
    (["data.heldout_fraction=1.5"], "data.heldout_fraction: must be < 1.0; got 1.5"),
    (["render.max_seq_len=long"], "render.max_seq_len: expected an integer, got str 'long'"),
    (["data.min_chars=10", "data.max_chars=5"], "data.max_chars: must be >= min_chars (10)"),
    (["data.sources.0.format=xml"], "data.sources[0].format: must be one of auto, lmsys"),
    (["data.sources.3.path=x"], "data.sources.3: no such list item to override"),
])
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, override)
    assert str(e.value).startswith(message)


def test_bad_config_file_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: x\ndata:\n  sources:\n    - path: a.jsonl\n      formt: lmsys\n")
    res = cli("config", "show", str(bad))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "convlearn: error: data.sources[0].formt: unknown key (known keys here: path, format, split, subset, "
        "limit, domain, oasst_best_path_only)"]
    res = cli("config", "show", str(bad), "--set", "data.sources.0={path: a.jsonl}", "--set", "seed=-1")
    assert res.returncode == 2 and res.stderr.strip() == "convlearn: error: seed: must be >= 0; got -1"
    (tmp_path / "broken.yaml").write_text("model: [\n")
    res = cli("config", "show", str(tmp_path / "broken.yaml"))
    assert res.returncode == 2 and "not valid YAML at line" in res.stderr and "Traceback" not in res.stderr


def test_config_reference_is_current():
    """docs/CONFIG.md is generated from the code (`make docs`); every key has a doc string."""
    from convlearn.eval.evaluations import evaluations_docs
    from convlearn.train.methods import methods_docs
    docs = config_docs() + methods_docs() + evaluations_docs()
    assert (ROOT / "docs" / "CONFIG.md").read_text() == docs
    rows = [line for line in docs.splitlines() if line.startswith("| `")]
    assert len(rows) > 25 and all(not line.rstrip().endswith("|  |") for line in rows)


def test_gpu_training_defaults_are_the_correct_ones():
    """Mixed precision on GPU (fp32 master weights and state), the warm projector refresh, global clipping."""
    cfg = load_config(None)
    assert cfg.train.precision == "auto" and cfg.method.refresh == "warm"
    assert cfg.method.layerwise_clipping == "global"
    assert not hasattr(cfg.eval, "mmlu_success_bar")  # the success bars live in eval.criteria, one place
    assert cfg.eval.criteria.retention_points == 3.0 and cfg.eval.criteria.conversation_ppl_change == -0.15


def test_an_unknown_evaluation_exits_2_naming_its_suite(tmp_path):
    """config/ cannot see the evaluations registry (eval/evaluations/): `config show` and `train` check suite
    items themselves, before any work (the train run below never gets to its model or data)."""
    from convlearn.eval.evaluations import evaluation_names
    known = f"(known: {', '.join(evaluation_names())})"
    res = cli("config", "show", "--set", "eval.suites.quick=[conversation_ppl, bleu]")
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"convlearn: error: eval.suites.quick: unknown evaluation 'bleu' {known}"]
    (tmp_path / "run.yaml").write_text("model:\n  name: no/such-model\neval:\n  suites:\n    mine: [bleu]\n")
    res = cli("train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"convlearn: error: eval.suites.mine: unknown evaluation 'bleu' {known}"]
    assert not (tmp_path / "out").exists()
