"""One precision policy (precision.py) wherever a model is scored or served: a checkpoint's per-sample
figures from the training loop's evaluation, from `convlearn eval` and from a plain `RunEvaluator` under the
policy are the same, in every precision mode that runs on CPU; the server loads through the registry."""
import json

import pytest
import torch

from helpers import cli_here, run_config, train

# (train.precision, method overrides): bf16-mixed runs on CPU under torch.autocast("cpu"); LoRA and frozen
# embeddings are the cases where bf16-mixed holds weights that are not trained in bf16.
CASES = {
    "fp32": ("fp32", ["method.name=adamw"]),
    "bf16": ("bf16", ["method.name=adamw"]),
    "bf16-mixed": ("bf16-mixed", ["method.name=adamw"]),
    "bf16-mixed lora": ("bf16-mixed", ["method.name=lora", "method.lora_rank=8", "train.lr=0.01"]),
    "bf16-mixed frozen embeddings": ("bf16-mixed", ["method.name=galore", "method.embeddings=freeze"]),
}
STEPS = 3


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("policy")
    cfg = run_config(root / "run.yaml", tiny_models["qwen2"], root / "cache",
                     train={"max_steps": STEPS}, eval={"heldout_samples": 16})
    return root, cfg


def plain_evaluation(run, step: int, out):
    """The checkpoint scored by hand with the policy's parts: no `convlearn eval`, no training loop."""
    from convlearn.config import load_config
    from convlearn.data.prepare import prepare
    from convlearn.eval.suites import RunEvaluator
    from convlearn.models import load_from_config, load_tokenizer, model_spec
    from convlearn.precision import resolve_precision
    from convlearn.train.checkpoint import MODEL_DIR, checkpoint_path
    from convlearn.train.methods import method_for
    cfg = load_config(run / "config.yaml")
    prec = resolve_precision(cfg.train.precision, "cpu")
    tok, spec = load_tokenizer(cfg.model.name), model_spec(cfg.model.name)
    model = method_for(cfg.method).load_trained(
        checkpoint_path(run, step) / MODEL_DIR,
        lambda name: load_from_config(cfg.model, weights=None if name == cfg.model.name else name, precision=prec),
        cfg.model.name)
    prec.hold_frozen(model)
    model.eval()
    evaluator = RunEvaluator.for_run(cfg, tok, spec, prepare(cfg, tok, spec, progress=False), out)
    with torch.no_grad(), prec.autocast():
        return evaluator.run(model, step, "quick")


def per_sample(record: dict) -> dict:
    return record["evaluations"]["conversation_ppl"]["per_sample"]


@pytest.mark.parametrize("case", list(CASES))
def test_a_checkpoint_scores_the_same_wherever_it_is_scored(base, tmp_path, case):
    root, cfg = base
    precision, sets = CASES[case]
    run = tmp_path / "run"
    res = train(cfg, run, f"train.precision={precision}", *sets, fresh=False)
    assert res.returncode == 0, res.stderr[-3000:]
    from convlearn.train.summary import RunSummary
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"] == precision  # the mode string, as before
    assert RunSummary.from_json(summary).to_json() == summary
    in_loop = json.loads((run / "evals" / f"step-{STEPS}.json").read_text())
    ev = cli_here("eval", run, "--step", STEPS, "--suite", "quick", "--out", tmp_path / "eval")
    assert ev.returncode == 0, ev.stderr[-3000:]
    by_cli = json.loads((tmp_path / "eval" / "evals" / f"step-{STEPS}.json").read_text())
    plain = plain_evaluation(run, STEPS, tmp_path / "plain")
    want = per_sample(in_loop)
    assert len(want["ids"]) == 16 and sum(want["tokens_all"]) > 0
    for other in (per_sample(by_cli), per_sample(plain)):
        assert other["ids"] == want["ids"] and other["tokens_all"] == want["tokens_all"]
        # per-sample nats are stored to 4 decimals: the tolerance is that rounding, far below a dtype change
        for key in ("nats_all", "nats_assistant"):
            assert other[key] == pytest.approx(want[key], rel=1e-5, abs=2e-4), (case, key)


def test_the_policy_resolves_once_per_mode():
    from convlearn.precision import resolve_precision
    mixed = resolve_precision("bf16-mixed", "cuda:1")
    assert (mixed.weight_dtype, mixed.frozen_dtype, mixed.weight_dtype_name) == \
        (torch.float32, torch.bfloat16, "float32")
    pure = resolve_precision("bf16", "cpu")
    assert (pure.weight_dtype, pure.frozen_dtype, pure.weight_dtype_name) == (torch.bfloat16, torch.bfloat16,
                                                                             "bfloat16")
    with resolve_precision("bf16-mixed", "cpu").autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with resolve_precision("fp32", "cpu").autocast():
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp16", "cpu")


def test_serve_engine_loads_through_the_registry(tiny_models):
    """Gemma-2's twin with the registry's eager attention, weights and generation under the policy."""
    from convlearn.serve.engine import Completion, Params, TransformersEngine
    engine = TransformersEngine(str(tiny_models["gemma2"]), "v0", device="cpu")
    assert engine.model.config._attn_implementation == "eager"
    assert engine.precision.mode == "fp32" and next(engine.model.parameters()).dtype == torch.float32
    pure = TransformersEngine(str(tiny_models["qwen2"]), "v1", device="cpu", precision="bf16")
    assert pure.model.config._attn_implementation == "sdpa"
    assert next(pure.model.parameters()).dtype == torch.bfloat16
    done = Completion()
    text = "".join(pure.stream([{"role": "user", "content": "Hello"}], Params(max_tokens=4, temperature=0), done))
    assert done.completion_tokens > 0 and text == done.text


@pytest.mark.parametrize("case", ["fp32", "bf16", "bf16-mixed"])
def test_the_gate_scores_a_checkpoint_as_the_loop_does(base, tmp_path, case):
    """The gate that decides promotion scores the exported checkpoint on the same conversations with the same
    numbers as the training loop's evaluation did (the third place a checkpoint's perplexity is computed)."""
    from convlearn.config import load_config
    from convlearn.data.prepare import prepare
    from convlearn.learn.gate import Gate
    from convlearn.models import load_tokenizer, model_spec
    root, cfg = base
    precision, sets = CASES[case]
    run = tmp_path / "run"
    assert train(cfg, run, f"train.precision={precision}", *sets, fresh=False).returncode == 0
    folder = tmp_path / "exported"
    assert cli_here("export", run, "--step", STEPS, "--out", folder).returncode == 0
    rcfg = load_config(run / "config.yaml", ["eval.original=null", "eval.benchmarks=[]"])  # conversations only
    tok, spec = load_tokenizer(rcfg.model.name), model_spec(rcfg.model.name)
    heldout = tmp_path / "heldout.jsonl"  # the run's held-out conversations, as a round writes the gate's
    heldout.write_text("".join(json.dumps(c.to_dict()) + "\n"
                               for c in prepare(rcfg, tok, spec, progress=False).heldout_conversations()))
    gate = Gate(rcfg, tok, spec, heldout, tmp_path / "gate", tmp_path / "gate-cache")
    by_gate = per_sample(gate._score(str(folder), "v1", STEPS))
    in_loop = per_sample(json.loads((run / "evals" / f"step-{STEPS}.json").read_text()))
    want = dict(zip(in_loop["ids"], zip(in_loop["nats_assistant"], in_loop["tokens_assistant"])))
    got = dict(zip(by_gate["ids"], zip(by_gate["nats_assistant"], by_gate["tokens_assistant"])))
    common = sorted(set(want) & set(got))
    assert len(common) == len(want) == 16
    for sid in common:
        assert got[sid][1] == want[sid][1]
        assert got[sid][0] == pytest.approx(want[sid][0], rel=1e-5, abs=2e-4), (case, sid)
