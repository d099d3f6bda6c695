"""`convlearn data inspect` and `data prepare` through the real CLI."""
import json
import subprocess
import sys

import pytest

import datafiles as F


def cli(*args):
    return subprocess.run([sys.executable, "-m", "convlearn", *args], capture_output=True, text=True)


def test_inspect_json_reports_counts_and_exits_0_despite_skips(tmp_path):
    path = F.write_jsonl(tmp_path / "lmsys.jsonl", F.lmsys_rows())
    res = cli("data", "inspect", str(path), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert {"format", "conversations", "messages", "skipped", "scrubbed"} <= set(out)
    assert out["format"] == "lmsys" and out["conversations"] == 5 and out["messages"] == 10
    assert out["skipped"] == F.LMSYS_EXPECTED["skipped"] and out["scrubbed"] == F.LMSYS_EXPECTED["scrubbed"]
    text = cli("data", "inspect", str(path))
    assert text.returncode == 0 and "duplicate 1" in text.stdout and "format:        lmsys" in text.stdout


def test_inspect_exit_2_when_unreadable_or_undeterminable(tmp_path):
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "odd.jsonl").write_text('{"foo": 1}\n{"bar": 2}\n')
    (tmp_path / "bad.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    for args, needle in [(["missing.jsonl"], "no such file"),
                         ([str(tmp_path / "junk.parquet")], "not a readable parquet file"),
                         ([str(tmp_path / "odd.jsonl")], "cannot determine the format"),
                         ([str(tmp_path / "bad.jsonl.gz")], "cannot read"),
                         ([str(tmp_path / "odd.jsonl"), "--format", "sharegpt"], None)]:
        res = cli("data", "inspect", *args, "--json")
        if needle is None:  # forced format: every row skipped, still exit 0
            assert res.returncode == 0 and json.loads(res.stdout)["skipped"] == {"missing_field": 2}
            continue
        assert res.returncode == 2, (args, res.stderr)
        assert needle in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_prepare_caches_by_data_tokenizer_and_rendering(tmp_path, tiny_models):
    from helpers import cli_here as cli
    data = F.write_jsonl(tmp_path / "lmsys.jsonl", F.lmsys_rows())
    base = ["--quiet", "--set", f"model.name={tiny_models['llama']}", "--set", f"data.cache_dir={tmp_path}/cache",
            "--set", f"data.sources=[{{path: {data}}}, {{path: chatterbot}}]", "--set", "data.heldout_fraction=0.2",
            "--set", "render.max_seq_len=128"]
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: {dtype: float32}\n")
    first = cli("data", "prepare", str(cfg), *base)
    assert first.returncode == 0, first.stderr
    meta = json.loads(first.stdout)
    assert meta["data"]["conversations"] == 5 + 898 and meta["data"]["format"] == "mixed"
    assert meta["heldout_rows"] > 0 and meta["train_rows"] > 0
    assert 0 < meta["train_assistant_tokens"] < meta["train_loss_tokens"] == meta["train_all_tokens"]
    again = json.loads(cli("data", "prepare", str(cfg), *base).stdout)
    assert again == meta  # served from the cache: same key, same figures
    other = json.loads(cli("data", "prepare", str(cfg), *base, "--set", "render.max_seq_len=256").stdout)
    assert other["key"] != meta["key"]
    assistant = json.loads(cli("data", "prepare", str(cfg), *base, "--set", "render.loss=assistant").stdout)
    assert assistant["key"] == meta["key"] and assistant["train_loss_tokens"] == meta["train_assistant_tokens"]

    from pathlib import Path

    from convlearn.data.prepare import PreparedData
    prepared = PreparedData(Path(meta["path"]), meta)
    train, held = prepared.dataset("train"), prepared.dataset("heldout")
    assert len(train) == meta["train_rows"] and len(held) == meta["heldout_rows"]
    assert all(len(r["input_ids"]) <= 128 for r in train)
    assert all(len(r["input_ids"]) == len(r["assistant_mask"]) == len(r["token_bytes"]) for r in held)
    held_ids = {c.id for c in prepared.heldout_conversations()}
    assert held_ids == set(held["conversation_id"]) and not held_ids & set(train["conversation_id"])
    assert len(held_ids) == meta["data"]["heldout"]

    packed = json.loads(cli("data", "prepare", str(cfg), *base, "--set", "render.pack=true").stdout)
    ptrain = PreparedData(Path(packed["path"]), packed).dataset("train")
    assert len(ptrain) < len(train) and sum(len(r) for r in ptrain["input_ids"]) == sum(
        len(r) for r in train["input_ids"])
    assert all(len(r) <= 128 for r in ptrain["input_ids"])


def test_prepare_bad_config_exits_2(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("render: {loss: everything}\n")
    res = cli("data", "prepare", str(cfg))
    assert res.returncode == 2
    assert res.stderr.strip() == "convlearn: error: render.loss: must be one of all, assistant; got 'everything'"


def test_one_heldout_set_for_every_training_cap():
    """Experiment 2's three sizes used to be scored on 10 / 42 / 97 held-out samples: the held-out side was what
    reading met before the training cap. With data.heldout_conversations it is fixed before the cap."""
    from convlearn.config import load_config
    from convlearn.data.records import DataStats
    from convlearn.data.stream import iter_records

    def heldout(cap, fixed):
        sets = ["data.sources=[{path: chatterbot}]", "data.heldout_fraction=0.1", f"data.max_conversations={cap}"]
        cfg = load_config(None, sets + ([f"data.heldout_conversations={fixed}"] if fixed else []))
        keyed = list(iter_records(cfg.data, DataStats()))
        assert sum(not k.heldout for k in keyed) == cap
        return [k.record.id for k in keyed if k.heldout]
    old = [len(heldout(cap, None)) for cap in (100, 300, 600)]
    assert old[0] < old[1] < old[2]  # the failing case: the held-out set grows with the cap
    fixed = [heldout(cap, 80) for cap in (100, 300, 600)]
    assert len(fixed[0]) == 80 and fixed[0] == fixed[1] == fixed[2]
