"""Faults that end in one clear line, and state that survives them: damaged checkpoints, non-finite weights,
a full disk, an unwritable place, bad configs, empty data, packed rows."""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from helpers import cli_here, metrics, run_config, train


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_models):
    """16 steps of GaLore with a checkpoint every 4 (the last three kept), uninterrupted."""
    root = tmp_path_factory.mktemp("faults")
    cfg = run_config(root / "run.yaml", tiny_models["qwen2"], root / "cache",
                     train={"max_steps": 16, "save_every": 4, "keep_last": 3},
                     eval={"schedule": [], "final_suite": None})
    res = train(cfg, root / "ref")
    assert res.returncode == 0, res.stderr[-2000:]
    return root, cfg


def _damage(ckpt, kind):
    weights, state = ckpt / "model" / "model.safetensors", ckpt / "trainer_state.pt"
    if kind == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind == "truncated state":
        state.write_bytes(state.read_bytes()[:100])
    elif kind == "empty state":
        state.write_bytes(b"")
    elif kind == "no config.json":
        (ckpt / "model" / "config.json").unlink()
    elif kind == "random bytes in weights":  # same size, different content
        data = bytearray(weights.read_bytes())
        data[-4096:] = os.urandom(4096)
        weights.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["truncated weights", "truncated state", "empty state", "no config.json",
                                  "random bytes in weights"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_intact_one(reference, kind):
    root, cfg = reference
    out = root / f"damaged-{kind.replace(' ', '-')}"
    shutil.copytree(root / "ref", out)
    for step in (16,):  # the run ended at 16: make it resume from 12 by damaging 16, then train to 20
        _damage(out / "checkpoints" / f"step-{step:08d}", kind)
    res = train(cfg, out, "--resume", "--max-steps=20")
    assert res.returncode == 0, res.stderr[-2000:]
    line = [x for x in res.stderr.splitlines() if "damaged" in x]
    assert len(line) == 1 and "step-00000016" in line[0] and "Traceback" not in res.stderr
    steps = [r["step"] for r in metrics(out)]
    assert steps == list(range(1, 21))  # 13-16 were trained again from step 12, then 17-20
    ref = [r["loss"] for r in metrics(root / "ref")]
    assert [r["loss"] for r in metrics(out)][:16] == ref  # resumed exactly from the intact checkpoint


@pytest.mark.slow
def test_every_checkpoint_damaged_is_one_line(reference):
    root, cfg = reference
    out = root / "all-damaged"
    shutil.copytree(root / "ref", out)
    for ckpt in (out / "checkpoints").glob("step-*"):
        _damage(ckpt, "empty state")
    res = train(cfg, out, "--resume")
    assert res.returncode == 2 and "every checkpoint is damaged" in res.stderr and "Traceback" not in res.stderr


def test_non_finite_weights_are_rolled_back_then_the_run_stops(tmp_path, tiny_models, capsys):
    """An update that makes weights non-finite (finite loss and gradients): never saved; the run goes back to
    its last checkpoint once, and stops with one line when it happens again."""
    from convlearn.config import load_config
    from convlearn.train.build import build_trainer, set_up_run
    from convlearn.train.checkpoint import complete_checkpoints, damage
    from convlearn.train.loop import RunStopped
    cfg = load_config(run_config(tmp_path / "run.yaml", tiny_models["qwen2"], tmp_path / "cache",
                                 method={"name": "adamw"}, train={"max_steps": 12, "save_every": 4},
                                 eval={"schedule": [], "final_suite": None}))
    trainer = build_trainer(set_up_run(cfg, tmp_path / "run"))
    step = trainer.trainable.optimizer.step

    def blows_up_at_step_6(*a, **k):  # a numerical blow-up of the update itself, from step 6 on
        step(*a, **k)
        if trainer.state["step"] + 1 >= 6:
            next(trainer.trainable.model.parameters()).data.fill_(float("inf"))
    trainer.trainable.optimizer.step = blows_up_at_step_6
    with pytest.raises(RunStopped, match="non-finite again after rolling back to step-00000004"):
        trainer.run()
    assert "rolled back to step-00000004" in capsys.readouterr().err
    ckpts = complete_checkpoints(tmp_path / "run")
    assert [c.name for c in ckpts] == ["step-00000004"] and damage(ckpts[0]) is None  # nothing non-finite saved
    assert [r["step"] for r in metrics(tmp_path / "run")] == [1, 2, 3, 4, 5]  # the rolled-back steps are gone


@pytest.mark.slow
def test_a_full_disk_mid_checkpoint_is_one_line_and_resume_is_exact(reference):
    """The file-size limit stands in for a disk filling: the write fails with EFBIG inside a checkpoint."""
    root, cfg = reference
    out = root / "disk-full"
    size = (root / "ref" / "checkpoints" / "step-00000016" / "model" / "model.safetensors").stat().st_size

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))
    assert train(cfg, out, "--max-steps=8").returncode == 0  # checkpoints 4 and 8 on a disk with room
    args = [sys.executable, "-m", "convlearn", "train", str(cfg), "--out", str(out), "--resume"]
    res = subprocess.run(args, capture_output=True, text=True, preexec_fn=limit)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "EFBIG" in res.stderr and "--resume" in res.stderr
    done = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    assert done == ["step-00000004", "step-00000008"] and all(
        (out / "checkpoints" / d / "COMPLETE").is_file() for d in done)
    again = train(cfg, out, "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert [r["loss"] for r in metrics(out)] == [r["loss"] for r in metrics(root / "ref")]
    assert not list((out / "checkpoints").glob(".tmp-*"))  # the half-written one was cleaned up


def test_unwritable_output_is_one_line(tmp_path, tiny_models):
    (tmp_path / "a-file").write_text("not a directory")
    cfg = run_config(tmp_path / "run.yaml", tiny_models["qwen2"], tmp_path / "cache")
    res = train(cfg, tmp_path / "a-file" / "run", fresh=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "a-file" in res.stderr and "ENOTDIR" in res.stderr


def test_bad_rates_and_bad_files_are_one_line(tmp_path, tiny_models):
    cfg = run_config(tmp_path / "run.yaml", tiny_models["qwen2"], tmp_path / "cache")
    for value, needle in ((".inf", "train.lr: must be a finite number"), ("1e39", "train.lr: must be <= 1.0")):
        res = cli_here("config", "show", cfg, "--set", f"train.lr={value}")
        assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "empty.yaml").write_text("")
    res = cli_here("train", tmp_path / "empty.yaml", "--out", tmp_path / "x")
    assert res.returncode == 2 and "model.name: is required" in res.stderr
    (tmp_path / "latin1.yaml").write_bytes("model: {name: caf\xe9}\n".encode("latin-1"))
    res = cli_here("config", "show", tmp_path / "latin1.yaml")
    assert res.returncode == 2 and "not UTF-8" in res.stderr and "Traceback" not in res.stderr


def test_empty_data_names_its_sources_and_their_skips(tmp_path, tiny_models):
    data = tmp_path / "junk.jsonl"
    data.write_text('{"conversation_id": "a", "conversation": "not a list"}\n{broken\n')
    cfg = run_config(tmp_path / "run.yaml", tiny_models["qwen2"], tmp_path / "cache",
                     data={"sources": [{"path": str(data), "format": "lmsys"}]})
    res = train(cfg, tmp_path / "run", fresh=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "no training samples" in res.stderr and "junk.jsonl" in res.stderr
    assert "invalid_json 1" in res.stderr and "wrong_type 1" in res.stderr


def test_galore_rank_not_below_a_side_trains_that_matrix_full_rank(tmp_path, tiny_models):
    from convlearn.config import load_config
    from convlearn.models import load_model, model_spec
    from convlearn.train.galore import state_bytes
    from convlearn.train.methods import build_method
    cfg = load_config(None, ["method.name=galore", "method.rank=128"])  # the twins' hidden size is 128
    model = load_model(str(tiny_models["qwen2"]))
    tr = build_method(model, cfg, model_spec(str(tiny_models["qwen2"])), "cpu")
    projected = tr.optimizer.param_groups[1]["params"]
    assert projected == []  # every target has a side of 128: none is projected, none holds more than AdamW
    adamw = build_method(load_model(str(tiny_models["qwen2"])), load_config(None, ["method.name=adamw"]),
                         model_spec(str(tiny_models["qwen2"])), "cpu")
    ids = torch.randint(0, 100, (2, 16))
    for t in (tr, adamw):
        t.model(input_ids=ids, labels=ids).loss.backward()
        t.optimizer.step()
    assert state_bytes(tr.optimizer) <= state_bytes(adamw.optimizer)
    res = cli_here("train", run_config(tmp_path / "r.yaml", tiny_models["qwen2"], tmp_path / "cache",
                                       method={"rank": 128}, train={"max_steps": 1}), "--out", tmp_path / "r")
    assert res.returncode == 0 and "trained full-rank" in res.stderr


def test_a_killed_prepare_leaves_no_temp_behind(tmp_path, tiny_models, tokenizers):
    from convlearn.config import load_config
    from convlearn.data.prepare import prepare
    from convlearn.models import model_spec
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (cache / f".abc.tmp-{dead.pid}").mkdir()  # what a prepare killed mid-way leaves
    (cache / f".abc.tmp-{os.getpid()}").mkdir()  # a live process's: left alone
    cfg = load_config(None, [f"model.name={tiny_models['qwen2']}", "data.sources=[{path: chatterbot, limit: 20}]",
                             f"data.cache_dir={cache}"])
    prepare(cfg, tokenizers["qwen2"], model_spec(cfg.model.name), progress=False)
    assert not (cache / f".abc.tmp-{dead.pid}").exists() and (cache / f".abc.tmp-{os.getpid()}").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["adamw", "lora", "galore", "galore-layerwise", "galore-replay"])
def test_packed_rows_train_with_every_method(tmp_path, tiny_models, method):
    sets = {"adamw": ["method.name=adamw"], "lora": ["method.name=lora", "method.lora_rank=4"],
            "galore": ["method.name=galore"], "galore-layerwise": ["method.name=galore", "method.layerwise=true"],
            "galore-replay": ["method.name=galore", "replay.ratio=0.25",
                              "replay.original={path: python-docstrings, format: text, limit: 100}"]}[method]
    cfg = run_config(tmp_path / "run.yaml", tiny_models["qwen2"], tmp_path / "cache",
                     render={"pack": True}, train={"max_steps": 3, "order": "by_domain"})
    res = train(cfg, tmp_path / "run", *sets, fresh=False)
    assert res.returncode == 0, res.stderr[-2000:]
    m = metrics(tmp_path / "run")
    assert len(m) == 3 and all(r["data"]["domain"] for r in m)
    from convlearn.data.prepare import PreparedData
    meta = json.loads(next((tmp_path / "cache").glob("*/meta.json")).read_text())
    packed = PreparedData(next((tmp_path / "cache").glob("*/meta.json")).parent, meta).dataset("train")
    row = packed[0]
    assert len(row["domains"]) == len(row["lengths"]) == len(row["conversation_ids"]) == len(row["sources"])
    assert len(row["token_bytes"]) == len(row["input_ids"]) == sum(row["lengths"])
