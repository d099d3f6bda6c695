"""The training engine through the real CLI on a tiny Qwen2 twin: learning, exact resume after SIGKILL,
layer-wise GaLore with accumulation, gradient norms, failure handling, DDP."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import kill_after_steps, metrics, run_config, train

REPLAY = ["replay.ratio=0.25", "replay.source=both", "replay.reservoir_size=16",
          "replay.original={path: python-docstrings, format: text, limit: 300}"]
METHODS = {
    "adamw": ["method.name=adamw"],
    "lora": ["method.name=lora", "method.lora_rank=8", "method.lora_alpha=16", "train.lr=0.01"],
    "galore": ["method.name=galore"],
    "galore-layerwise": ["method.name=galore", "method.layerwise=true"],
    "adamw-layerwise": ["method.name=adamw", "method.layerwise=true", "method.layerwise_clipping=per_tensor"],
    "galore-layerwise-replay": ["method.name=galore", "method.layerwise=true", *REPLAY],
}


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("train")
    cfg = run_config(root / "run.yaml", tiny_models["qwen2"], root / "cache",
                     method={"rank": 16, "update_proj_gap": 4},
                     train={"max_steps": 16, "save_every": 4, "warmup_steps": 10},  # kills land in warm-up
                     eval={"schedule": [{"step": 0, "suite": "quick"}, {"step": 8, "suite": "quick"}],
                           "heldout_samples": 32},
                     logging={"tensorboard": True})
    return root, cfg


@pytest.fixture(scope="module")
def runs(base):
    """One uninterrupted run per method, shared by the tests below."""
    root, cfg = base
    out = {}
    for name, sets in METHODS.items():
        res = train(cfg, root / name, *sets)
        assert res.returncode == 0, res.stderr[-3000:]
        out[name] = root / name
    return out


def test_every_method_learns_from_the_same_start(runs):
    first = {name: metrics(out)[0]["loss"] for name, out in runs.items() if "replay" not in name}
    assert len(set(first.values())) == 1, first  # same model, same first batch, whatever the method
    for name, out in runs.items():
        m = metrics(out)
        lr = 0.01 if name == "lora" else 0.003
        assert [r["step"] for r in m] == list(range(1, 17))
        start = json.loads((out / "evals" / "step-0.json").read_text())["evaluations"]["conversation_ppl"]["all"]
        end = json.loads((out / "evals" / "step-16.json").read_text())["evaluations"]["conversation_ppl"]["all"]
        assert sorted(p.name for p in (out / "evals").iterdir()) == ["step-0.json", "step-16.json", "step-8.json"]
        # LoRA trains no embeddings: on a random-init twin it gains less in 16 steps
        assert end["loss"] < start["loss"] - (0.3 if name == "lora" else 0.5), (name, start["loss"], end["loss"])
        assert start["tokens"] == end["tokens"] > 0 and end["bits_per_byte"] > 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["steps"] == 16 and summary["skipped_steps"] == 0 and summary["method"] in name
        assert [r["lr"] for r in m][:3] == pytest.approx([0.1 * lr, 0.2 * lr, 0.3 * lr])  # warm-up, then flat
        t = summary["time"]  # where the wall time went: parts add up to the whole
        assert t["compute_s"] > 0 and t["data_s"] > 0 and t["eval_s"] > 0 and t["checkpoint_s"] > 0
        parts = t["data_s"] + t["compute_s"] + t["eval_s"] + t["checkpoint_s"] + t["other_s"]
        assert parts == pytest.approx(t["wall_s"], abs=0.01) and 0 < t["outside_compute_share"] < 1
        assert all(r["data_seconds"] < r["step_seconds"] for r in m)
        assert any((out / "tb").iterdir())  # TensorBoard events
        for r in m:
            assert {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "skipped_steps"} <= set(r)
            assert r["memory"]["activation_bytes_peak"] > 0  # measured on CPU from autograd's saved tensors
        assert summary["tokens_per_s"] == pytest.approx(summary["throughput"]["tokens"]
                                                        / (t["wall_s"] - t["eval_s"]), rel=1e-3)


def test_memory_figures_are_exact_counts(runs, tiny_models):
    from convlearn.models import load_model
    model = load_model(str(tiny_models["qwen2"]))
    params = sum(p.numel() * 4 for p in model.parameters())
    adamw = metrics(runs["adamw"])[-1]["memory"]
    assert adamw["trainable_param_bytes"] == params == adamw["grad_bytes_peak"]
    assert adamw["optimizer_state_bytes"] == 2 * params + 4 * len(list(model.parameters()))
    galore = metrics(runs["galore"])[-1]["memory"]
    assert galore["optimizer_state_bytes"] < 0.6 * adamw["optimizer_state_bytes"]
    layerwise = [r["memory"]["grad_bytes_peak"] for r in metrics(runs["galore-layerwise"])]
    assert max(layerwise) < 0.5 * params  # gradients never all coexist
    lora = metrics(runs["lora"])[-1]["memory"]
    assert lora["trainable_param_bytes"] < 0.1 * params


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_sigkill_and_resume_gives_identical_losses(base, runs, method):
    root, cfg = base
    out = root / f"killed-{method}"
    proc = train(cfg, out, *METHODS[method], wait=False)
    killed_at = kill_after_steps(proc, out, 7)
    assert 7 <= killed_at < 16
    with open(out / "metrics.jsonl", "a") as fh:  # killed mid-write: a partial last line
        fh.write('{"step": 99, "loss": 1.2')
    res = train(cfg, out, *METHODS[method], "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = [(r["loss"], r["lr"]) for r in metrics(out)]
    reference = [(r["loss"], r["lr"]) for r in metrics(runs[method])]
    assert resumed == reference  # bit for bit, at the warm-up's rate where the kill fell inside it
    state = torch.load(out / "checkpoints" / "step-00000016" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 16 and state["stream"]["pos"] > 0


def _losses_and_norms(out):
    m = metrics(out)
    return [r["loss"] for r in m], [r["grad_norm"] for r in m]


@pytest.mark.slow
@pytest.mark.parametrize("accumulation", ["lowrank", "full"])
def test_layerwise_with_accumulation_equals_plain_galore(base, accumulation):
    root, cfg = base
    # 6 steps: refreshes at steps 1 and 5, low-rank accumulation between them. Longer runs drift apart by float
    # rounding alone (below), which Adam amplifies chaotically: 2% in a grad norm by step 9 on one CPU, 0 on another.
    common = ["train.grad_accum=3", "train.batch_size=2", "train.max_steps=6", "train.max_grad_norm=null",
              "train.save_every=0", "eval.schedule=[]", "eval.final_suite=null", "method.update_proj_gap=4"]
    plain = train(cfg, root / f"plain-accum-{accumulation}", *common, fresh=False)
    lw = train(cfg, root / f"lw-accum-{accumulation}", *common, "method.layerwise=true",
               f"method.layerwise_accumulation={accumulation}", fresh=False)
    assert plain.returncode == 0 and lw.returncode == 0, lw.stderr[-3000:]
    p_loss, p_norm = _losses_and_norms(root / f"plain-accum-{accumulation}")
    l_loss, l_norm = _losses_and_norms(root / f"lw-accum-{accumulation}")
    # lowrank sums the projected micro-batch gradients, plain projects their sum: equal in exact arithmetic, not
    # in floats (CI's CPU: 5e-5 relative at step 6). A dropped or double-counted micro-batch moves the loss > 1e-2.
    tol = 1e-5 if accumulation == "full" else 2e-4
    assert len(l_loss) == 6 and l_loss == pytest.approx(p_loss, rel=tol)
    for step, (a, b) in enumerate(zip(l_norm, p_norm)):
        if accumulation == "full" or step % 4 == 0:  # refresh steps keep the full gradient
            assert a == pytest.approx(b, rel=10 * tol)
        else:
            assert a is None  # the accumulated full gradient never existed: unknown, not 0
    if accumulation == "lowrank":
        peaks = [r["memory"]["grad_bytes_peak"] for r in metrics(root / f"lw-accum-{accumulation}")]
        full = metrics(root / f"plain-accum-{accumulation}")[0]["memory"]["grad_bytes_peak"]
        assert max(peaks[1:4]) < 0.5 * full  # the saving survives accumulation between refreshes


@pytest.mark.slow
def test_layerwise_grad_norm_is_the_real_one(base):
    root, cfg = base
    common = ["train.max_steps=6", "train.max_grad_norm=null", "train.save_every=0"]
    assert train(cfg, root / "gn-plain", *common, fresh=False).returncode == 0
    assert train(cfg, root / "gn-lw", *common, "method.layerwise=true", fresh=False).returncode == 0
    _, plain = _losses_and_norms(root / "gn-plain")
    _, lw = _losses_and_norms(root / "gn-lw")
    assert all(x > 0 for x in lw) and lw == pytest.approx(plain, rel=1e-4)


@pytest.mark.slow
def test_unavailable_methods_and_bad_runs_exit_2(base):
    root, cfg = base
    for sets, needle in [(["method.name=galore8bit"], "needs a CUDA GPU"),
                         (["method.name=apollo_mini"], "CC-BY-NC"),
                         (["method.name=lora", "method.layerwise=true"],
                          "method.layerwise: is an option of galore and adamw"),
                         (["train.lr=-1"], "train.lr: must be > 0")]:
        res = train(cfg, root / "never", *sets, fresh=False)
        assert res.returncode == 2, (sets, res.stderr[-2000:])
        assert needle in res.stderr and "Traceback" not in res.stderr
    res = train(cfg, root / "adamw-again", *METHODS["adamw"], "train.max_steps=1", fresh=False)
    assert res.returncode == 0
    again = train(cfg, root / "adamw-again", *METHODS["adamw"], "train.max_steps=1", fresh=False)
    assert again.returncode == 2 and "pass --resume" in again.stderr


def test_nonfinite_steps_are_skipped_then_the_run_stops(tmp_path, tiny_models, monkeypatch):
    """Batches whose loss is non-finite (from step 5 on) are skipped and counted; after max_bad_steps in a row
    the run stops with one line and a checkpoint of the last good state."""
    from convlearn.config import load_config
    from convlearn.train import loop
    from convlearn.train.build import build_trainer, set_up_run
    from convlearn.train.checkpoint import complete_checkpoints, damage
    cfg = load_config(run_config(tmp_path / "run.yaml", tiny_models["qwen2"], tmp_path / "cache",
                                 method={"name": "adamw"}, train={"max_steps": 12, "max_bad_steps": 3},
                                 eval={"schedule": [], "final_suite": None}))
    trainer = build_trainer(set_up_run(cfg, tmp_path / "run"))
    real = loop.token_losses

    def nan_from_step_5(*a, **k):
        s, n = real(*a, **k)
        return (s * float("nan"), n) if trainer.state["step"] >= 4 else (s, n)
    monkeypatch.setattr(loop, "token_losses", nan_from_step_5)
    with pytest.raises(loop.RunStopped, match="3 non-finite steps in a row"):
        trainer.run()
    m = metrics(tmp_path / "run")
    assert m[-1]["skipped_steps"] == 3 and all(r["loss"] != r["loss"] for r in m[-3:])  # NaN
    assert [c.name for c in complete_checkpoints(tmp_path / "run")] == ["step-00000007"]
    assert damage(complete_checkpoints(tmp_path / "run")[0]) is None  # the last good weights, intact


def test_checkpoints_are_atomic(tmp_path):
    from convlearn.train.checkpoint import latest_checkpoint
    root = tmp_path / "checkpoints"
    (root / "step-00000004").mkdir(parents=True)
    (root / "step-00000004" / "COMPLETE").write_text("{}")
    (root / "step-00000008").mkdir()  # crashed before COMPLETE: not a checkpoint
    (root / ".tmp-step-00000012-99").mkdir()
    (root / "latest").write_text("step-00000008")
    assert latest_checkpoint(tmp_path) == root / "step-00000004"


@pytest.mark.slow
def test_lora_saves_adapters_and_merged_weights(base, runs):
    root, cfg = base
    ckpt = runs["lora"] / "checkpoints" / "step-00000016" / "model"
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "model.safetensors").exists()
    out = root / "lora-merged"
    res = train(cfg, out, *METHODS["lora"], "train.max_steps=2", "method.save_merged=true", fresh=False)
    assert res.returncode == 0, res.stderr[-2000:]
    from convlearn.models import load_model
    merged = load_model(str(out / "merged"))
    assert not any("lora" in n for n, _ in merged.named_parameters())


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(base):
    root, cfg = base
    common = ["method.name=adamw", "train.max_steps=4", "train.save_every=0", "eval.schedule=[]",
              "eval.final_suite=null",
              "train.max_grad_norm=null"]
    single = train(cfg, root / "ddp-single", *common, "train.batch_size=4")
    assert single.returncode == 0, single.stderr[-2000:]
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
            "-m", "convlearn", "train", str(cfg), "--out", str(root / "ddp-two")]
    for s in common + ["train.batch_size=2"]:
        args += ["--set", s]
    res = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    one = [r["loss"] for r in metrics(root / "ddp-single")]
    two = [r["loss"] for r in metrics(root / "ddp-two")]
    assert two == pytest.approx(one, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adamw", "lora", "galore", "galore-layerwise"])
def test_shipped_tiny_configs_run(base, tiny_models, name):
    root, _ = base
    shipped = Path(__file__).resolve().parents[2] / "configs" / "tiny" / f"{name}.yaml"
    res = train(shipped, root / f"shipped-{name}", f"model.name={tiny_models['qwen2']}",
                f"data.cache_dir={root / 'cache'}", "logging.progress=false", "--max-steps=3", fresh=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["steps"] == 3


CHECKED = ("adamw", "galore", "galore-layerwise", "lora")


@pytest.mark.parametrize("method", CHECKED)
def test_every_checkpoint_is_a_self_contained_model_folder(runs, tokenizers, method):
    """AutoModel + AutoTokenizer + apply_chat_template + generate on the folder alone, with the training
    tokenizer's exact vocabulary, stopping at the family's end of turn."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    folder = runs[method] / "checkpoints" / "step-00000016" / "model"
    assert (runs[method] / "final").resolve() == folder.resolve()
    tok = AutoTokenizer.from_pretrained(folder)
    trained_with = tokenizers["qwen2"]
    assert tok.get_vocab() == trained_with.get_vocab() and len(tok) == len(trained_with)
    text = "Hello wörld, how are you? 123"
    assert tok(text)["input_ids"] == trained_with(text)["input_ids"]
    assert GenerationConfig.from_pretrained(folder).eos_token_id == [tok.convert_tokens_to_ids("<|im_end|>")]
    if method == "lora":
        from peft import AutoPeftModelForCausalLM
        base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        assert base == str((runs[method] / "base").resolve())  # a copy kept in the run directory
        model = AutoPeftModelForCausalLM.from_pretrained(folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder)
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi there"}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)
    out = model.generate(**chat, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > chat["input_ids"].shape[1]


def test_a_tokenizer_that_differs_is_caught(runs, tokenizers, tmp_path):
    """The vocabulary check above can fail: a folder saved with another tokenizer does not pass it."""
    import shutil

    from transformers import AutoTokenizer
    other = tmp_path / "other"
    shutil.copytree(runs["adamw"] / "checkpoints" / "step-00000016" / "model", other)
    tokenizers["llama"].save_pretrained(other)
    assert AutoTokenizer.from_pretrained(other).get_vocab() != tokenizers["qwen2"].get_vocab()


def test_export_writes_a_clean_folder_with_a_model_card(runs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers import cli_here
    res = cli_here("export", runs["adamw"], "--out", tmp_path / "adamw", "--dtype", "bf16")
    assert res.returncode == 0, res.stderr
    folder = tmp_path / "adamw"
    assert not (folder / "trainer_state.pt").exists() and not (folder / "COMPLETE").exists()
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nbase_model:") and "adamw" in card and "## Evaluation at step 16" in card
    assert "conversation_ppl/all" in card and "## Run config" in card and "conversations kept" in card
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert next(model.parameters()).dtype == torch.bfloat16 and AutoTokenizer.from_pretrained(folder)
    # LoRA: merged on demand into plain weights; or the adapter with the base it names
    assert cli_here("export", runs["lora"], "--out", tmp_path / "merged", "--merge").returncode == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert cli_here("export", runs["lora"], "--out", tmp_path / "adapter").returncode == 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    # --best by an evaluated figure: the steps with both a checkpoint and an evaluation (16 here)
    best = cli_here("export", runs["galore"], "--out", tmp_path / "best", "--best", "conversation_ppl/all")
    assert best.returncode == 0 and json.loads(best.stdout)["step"] == 16
    bad = cli_here("export", runs["galore"], "--out", tmp_path / "nope", "--best", "no/such")
    assert bad.returncode == 2 and "figures evaluated:" in bad.stderr
    # convlearn eval takes an exported folder like any model
    ev = cli_here("eval", tmp_path / "adamw", "--suite", "quick", "--out", tmp_path / "ev", "--set",
                  "data.sources=[{path: chatterbot, limit: 200}]", "--set", f"data.cache_dir={tmp_path / 'cache'}",
                  "--set", "render.max_seq_len=96", "--set", "eval.heldout_samples=8")
    assert ev.returncode == 0, ev.stderr[-1000:]


def test_export_refuses_a_damaged_checkpoint(runs, tmp_path):
    import shutil

    from helpers import cli_here
    run = tmp_path / "run"
    shutil.copytree(runs["galore"], run, symlinks=True)
    weights = run / "checkpoints" / "step-00000016" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    res = cli_here("export", run, "--out", tmp_path / "x", "--step", "16")
    assert res.returncode == 2 and "fails verification" in res.stderr and not (tmp_path / "x").exists()


class AllocatorPeak:
    """A peak counter with the CUDA allocator's semantics (max since the last reset), fed by what the test
    allocates; the loop's `peak` seam. CPU has no allocator counter to read."""

    def __init__(self):
        self.now = self.peak = 0
        self.resets = 0

    def hold(self, nbytes: int) -> None:
        self.peak = max(self.peak, self.now + nbytes)

    def read(self) -> int:
        return self.peak

    def reset(self) -> None:
        self.peak, self.resets = self.now, self.resets + 1


def test_training_peak_excludes_evaluation_and_the_eval_peak_is_recorded_apart(tmp_path, tiny_models):
    """Each evaluation's memory (here 10x a step's, like full-vocabulary logits at step 0) is its own figure;
    the step records, and the summary's peak_memory, hold training's peak alone."""
    from convlearn.config import load_config
    from convlearn.eval.suites import RunEvaluator, ScheduledEvaluator
    from convlearn.train.build import build_trainer, set_up_run
    cfg = load_config(run_config(tmp_path / "run.yaml", tiny_models["qwen2"], tmp_path / "cache",
                                 method={"name": "adamw"}, train={"max_steps": 4},
                                 eval={"schedule": [{"step": 0, "suite": "quick"}, {"step": 2, "suite": "quick"}]}))
    setup = set_up_run(cfg, tmp_path / "run")
    real = ScheduledEvaluator(RunEvaluator.for_run(cfg, setup.tokenizer, setup.spec, setup.prepared, setup.out),
                              cfg.eval, 4)
    peak = AllocatorPeak()

    class Evaluating:  # the real evaluator; what it holds at once is noted on the peak counter
        def due(self, step, last):
            return real.due(step, last)

        def run(self, step, model):
            peak.hold(1000)
            return real.run(step, model)
    trainer = build_trainer(setup, Evaluating())
    trainer.peak = peak
    trainer.trainable.optimizer.register_step_post_hook(lambda *_: peak.hold(100))  # a step's own memory
    summary = trainer.run()
    assert [r["memory"]["cuda_peak_bytes"] for r in metrics(tmp_path / "run")] == [100] * 4
    assert summary.peak_memory["cuda_peak_bytes"] == 100 and summary.eval_peak_bytes == 1000
    assert peak.resets == 2 * 3  # before and after each of the three evaluations (steps 0, 2 and the last)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["eval_peak_bytes"] == 1000


def test_without_cuda_no_peak_is_invented(tmp_path, tiny_models):
    """On CPU no CUDA peak is read: the evaluation's peak is the process's measured resident set (VmHWM), never
    more than its virtual peak, and the training peak is counted instead."""
    from convlearn.config import load_config
    from convlearn.experiments.run import run_training
    from convlearn.train.telemetry import CudaPeak
    cfg = load_config(run_config(tmp_path / "run.yaml", tiny_models["qwen2"], tmp_path / "cache",
                                 method={"name": "adamw"}, train={"max_steps": 2}))
    summary = run_training(cfg, tmp_path / "run")
    assert not torch.cuda.is_available() and CudaPeak().read() is None
    status = Path("/proc/self/status").read_text()
    vm_peak = int(re.search(r"VmPeak:\s+(\d+) kB", status).group(1)) * 1024
    assert 10_000_000 < summary.eval_peak_bytes <= vm_peak  # a real process holds torch: tens of MB at least
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["eval_peak_bytes"] == summary.eval_peak_bytes
    assert summary.peak_memory["activation_bytes_peak"] > 0
