"""Evaluation suites on tiny models through the real code path: perplexities, domains, probes, quality with a
judge, original-distribution perplexity, forgetting analysis, and `convlearn eval`."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import torch

from convlearn.config import load_config
from convlearn.data.prepare import prepare
from convlearn.eval.forgetting import analyze
from convlearn.eval.perplexity import figures, grouped_figures, sample_losses
from convlearn.eval.suites import RunEvaluator
from convlearn.models import load_model, model_spec
from helpers import cli_here as cli
from helpers import run_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_models, tokenizers):
    root = tmp_path_factory.mktemp("evalsuites")
    (root / "map.json").write_text(json.dumps({}))
    cfg = load_config(None, [f"model.name={tiny_models['qwen2']}", "data.sources=[{path: chatterbot}]",
                             "data.heldout_fraction=0.2", f"data.cache_dir={root / 'cache'}",
                             "render.max_seq_len=128", "eval.original={path: python-docstrings, limit: 40}",
                             "eval.quality_prompts=6", "eval.max_new_tokens=8", "eval.heldout_samples=null",
                             "eval.suites.ppl=[conversation_ppl, domain_ppl, original_ppl]",
                             "eval.suites.q=[quality]", "eval.schedule=[]", "eval.final_suite=null"])
    tok = tokenizers["qwen2"]
    prepared = prepare(cfg, tok, model_spec(cfg.model.name), progress=False)
    return root, cfg, tok, prepared


def test_memorised_text_has_far_lower_perplexity_than_a_fresh_model(setup, tiny_models):
    root, cfg, tok, prepared = setup
    held = prepared.dataset("heldout").select(range(6))
    model = load_model(str(tiny_models["qwen2"]))
    fresh = figures(sample_losses(model, held, tok.pad_token_id))["all"]["ppl"]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    from convlearn.train.batches import collate, token_losses
    batch = collate(held["input_ids"], held["token_mask"], tok.pad_token_id)
    for _ in range(60):
        s, n = token_losses(model, batch)
        (s / n).backward()
        opt.step()
        opt.zero_grad()
    memorised = figures(sample_losses(model, held, tok.pad_token_id))["all"]["ppl"]
    assert fresh > 1000 and memorised < fresh / 50, (fresh, memorised)


def test_per_domain_figures_add_up_to_the_overall_counts(setup, tiny_models, monkeypatch):
    root, cfg, tok, prepared = setup
    heldout_ids = prepared.dataset("heldout")["conversation_id"]
    (root / "map.json").write_text(json.dumps({cid: "even" if i % 2 else "odd" for i, cid in
                                               enumerate(dict.fromkeys(heldout_ids))}))
    monkeypatch.setattr(cfg.eval, "domain_map", str(root / "map.json"))  # the module's config, restored after
    ev = RunEvaluator.for_run(cfg, tok, model_spec(cfg.model.name), prepared, root / "run")
    record = ev.run(load_model(str(tiny_models["qwen2"])), 0, "ppl")
    overall = record["evaluations"]["conversation_ppl"]
    groups = record["evaluations"]["domain_ppl"]["groups"]
    assert set(groups) == {"domain", "language", "source", "mapped"}
    for name, by in groups.items():
        for mask in ("all", "assistant"):
            assert sum(g[mask]["tokens"] for g in by.values()) == overall[mask]["tokens"], (name, mask)
            assert sum(g[mask]["bytes"] for g in by.values()) == overall[mask]["bytes"]
        assert sum(g["samples"] for g in by.values()) == overall["samples"] == len(prepared.dataset("heldout"))
    assert len(groups["domain"]) > 5 and set(groups["mapped"]) == {"even", "odd"}
    original = record["evaluations"]["original_ppl"]
    assert original["source"] == "python-docstrings" and original["samples"] >= 40 and original["all"]["ppl"] > 1
    assert (root / "run" / "evals" / "step-0.json").is_file() and set(record["seconds"]) == {
        "conversation_ppl", "domain_ppl", "original_ppl"}


def test_an_evaluation_is_one_registered_class_and_the_heldout_pass_is_shared(setup, tiny_models, monkeypatch):
    """A registered class is a suite item with nothing else to change; conversation_ppl, domain_ppl and any
    evaluation reading ctx.heldout_losses share one held-out pass per run() call; unknown items name the key."""
    from convlearn.errors import ConfigError
    from convlearn.eval import evaluations
    from convlearn.eval.evaluations import Evaluation, base, register_evaluation

    class HeldoutTokens(Evaluation):
        name = "heldout_tokens"

        def run(self, ctx, model):
            return {"tokens": int(ctx.heldout_losses(model)["tokens_all"].sum()), "step": ctx.step}
    root, cfg, tok, prepared = setup
    monkeypatch.setitem(evaluations._REGISTRY, HeldoutTokens.name, HeldoutTokens)  # removed again after
    monkeypatch.setitem(cfg.eval.suites, "mine", ["conversation_ppl", "domain_ppl", "heldout_tokens"])
    passes = []
    monkeypatch.setattr(base, "sample_losses", lambda *a, **k: passes.append(1) or sample_losses(*a, **k))
    ev = RunEvaluator.for_run(cfg, tok, model_spec(cfg.model.name), prepared, root / "registry")
    model = load_model(str(tiny_models["qwen2"]))
    record = ev.run(model, 3, "mine")
    assert list(record["evaluations"]) == ["conversation_ppl", "domain_ppl", "heldout_tokens"] and len(passes) == 1
    assert record["evaluations"]["heldout_tokens"] == {
        "tokens": record["evaluations"]["conversation_ppl"]["all"]["tokens"], "step": 3}
    ev.run(model, 4, "mine")
    assert len(passes) == 2  # a fresh pass per call: the model may have changed in between
    with pytest.raises(RuntimeError, match="two evaluations are named 'quality'"):
        register_evaluation(type("Again", (Evaluation,), {"name": "quality"}))
    monkeypatch.setitem(cfg.eval.suites, "typo", ["conversation_pl"])
    with pytest.raises(ConfigError, match=r"^eval\.suites\.typo: unknown evaluation 'conversation_pl' \(known: "):
        RunEvaluator.for_run(cfg, tok, model_spec(cfg.model.name), prepared, root / "typo")


def test_grouped_figures_are_exact_partitions():
    per = {k: np.array([1.0, 2.0, 3.0, 4.0]) for k in
           ("nats_all", "tokens_all", "bytes_all", "nats_assistant", "tokens_assistant", "bytes_assistant")}
    g = grouped_figures(per, ["a", "b", "a", "b"])
    assert g["a"]["all"]["tokens"] == 4 and g["b"]["all"]["tokens"] == 6
    assert g["a"]["all"]["loss"] == pytest.approx(1.0)


class _Judge(BaseHTTPRequestHandler):
    calls = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.calls.append(body)
        reply = json.dumps({"choices": [{"message": {"content": "Verdict: A"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *a):
        pass


def test_quality_answers_rouge_and_a_pairwise_judge(setup, tiny_models, monkeypatch):
    root, cfg, tok, prepared = setup
    model = load_model(str(tiny_models["qwen2"]))
    ev = RunEvaluator.for_run(cfg, tok, model_spec(cfg.model.name), prepared, root / "quality")
    q0 = ev.run(model, 0, "q")["evaluations"]["quality"]
    assert q0["prompts"] == 6 and 0 <= q0["rougeL"] <= 1 and q0["reference_nll_per_token"] > 0
    assert q0["judge"] == {"skipped": "no judge configured (eval.judge.base_url is null)"}
    rows = [json.loads(line) for line in (root / "quality" / "evals" / "answers-step-0.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"prompt", "reference", "answer", "rougeL"} <= set(rows[0])
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(cfg.eval.judge, "base_url", f"http://127.0.0.1:{server.server_port}/v1")
    try:
        q5 = ev.run(model, 5, "q")["evaluations"]["quality"]
    finally:
        server.shutdown()
    judge = q5["judge"]
    assert judge["pairs"] == 6 == len(_Judge.calls) and judge["errors"] == 0
    assert judge["wins"] + judge["losses"] == 6 and 0 < judge["wins"] < 6  # "A" wins: order is randomised
    assert judge["win_rate"] == judge["wins"] / 6
    assert "[Reference response]" in _Judge.calls[0]["messages"][0]["content"]


def _record(step, mmlu, ppl, domains=None):
    ev = {"benchmarks": {"mmlu": {"score": mmlu}}, "conversation_ppl": {"all": {"loss": ppl, "bits_per_byte": 1}}}
    if domains:
        ev["domain_ppl"] = {"groups": {"domain": {d: {"all": {"loss": v}} for d, v in domains.items()}}}
    return {"step": step, "evaluations": ev}


def test_overlapping_schedule_entries_run_both_suites():
    """A scheduled `quick` at step 500 no longer replaces the periodic topic evaluation there."""
    from convlearn.eval.suites import schedule_for, suite_items
    cfg = load_config(None, ["eval.every=50", "eval.every_suite=topics", "eval.suites.topics=[domain_ppl]",
                             "eval.schedule=[{step: 0, suite: full}, {step: 500, suite: quick}]"]).eval
    plan = schedule_for(cfg, 1000)
    assert plan[500] == "topics+quick" and plan[450] == "topics" and plan[0] == "full"
    assert suite_items(cfg, plan[500]) == ["domain_ppl", "conversation_ppl"]


def test_forgetting_analysis():
    cfg = load_config(None).eval
    records = [_record(0, 0.60, 3.0, {"a": 3.0, "b": 3.0}), _record(500, 0.55, 2.5, {"a": 2.0, "b": 2.9}),
               _record(1000, 0.585, 2.0, {"a": 2.4, "b": 2.1})]
    out = analyze(records, cfg, phases=[{"domain": "a", "end_step": 500}, {"domain": "b", "end_step": 1000}])
    mmlu = out["figures"]["benchmarks.mmlu"]
    assert mmlu["change"] == pytest.approx(-0.015) and mmlu["max_drop"] == pytest.approx(0.05)
    assert mmlu["max_drop_step"] == 500 and mmlu["relative_change"] == pytest.approx(-0.025)
    flags = out["flags"]["benchmarks.mmlu"]
    assert flags["drop_points"] == pytest.approx(1.5) and flags["acceptable"] and flags["within_success_bar"]
    assert flags["max_drop_points"] == pytest.approx(5.0)
    assert out["figures"]["conversation_ppl.loss"]["max_drop"] == 0.0  # loss only fell
    assert out["backward_transfer"]["bwt_loss"] == pytest.approx(0.4)  # domain a: 2.0 -> 2.4


@pytest.mark.slow
def test_eval_command_on_a_run_and_on_a_model(tmp_path, tiny_models):
    cfg = run_config(tmp_path / "run.yaml", tiny_models["llama"], tmp_path / "cache",
                     method={"name": "lora", "lora_rank": 4}, train={"max_steps": 4, "save_every": 2, "lr": 1e-5},
                     eval={"heldout_samples": 16})
    assert cli("train", str(cfg), "--out", str(tmp_path / "run")).returncode == 0
    res = cli("eval", str(tmp_path / "run"), "--suite", "quick", "--step", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["step"] == 2 and "conversation_ppl/all" in out["headline"]
    assert sorted(p.name for p in (tmp_path / "run" / "evals").glob("step-*.json")) == [
        "step-0.json", "step-2.json", "step-4.json"]
    assert (tmp_path / "run" / "forgetting.json").is_file()
    bad = cli("eval", str(tmp_path / "run"), "--step", "3")
    assert bad.returncode == 2 and "no complete checkpoint for step 3" in bad.stderr
    res = cli("eval", str(tiny_models["llama"]), "--suite", "quick", "--out", str(tmp_path / "m"), "--set",
              "data.sources=[{path: chatterbot}]", "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set",
              "render.max_seq_len=96", "--set", "data.heldout_fraction=0.1", "--set", "eval.heldout_samples=16")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "m" / "evals" / "step-0.json").is_file()


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"])
def test_chunked_eval_loss_equals_the_full_logits_loss(tiny_models, tokenizers, arch):
    """Evaluation projects the final hidden states a chunk at a time (as training's chunked loss) instead of
    building [batch, seq, vocabulary] logits; every sample's nats are those of the full logits."""
    from datasets import Dataset
    rng = np.random.default_rng(0)
    vocab = tokenizers[arch].vocab_size
    ids = [rng.integers(5, vocab, n).tolist() for n in (37, 23, 50, 9)]  # ragged: padding inside a batch
    data = Dataset.from_dict({"input_ids": ids, "token_mask": [[0] * 3 + [1] * (len(x) - 3) for x in ids],
                              "assistant_mask": [[i % 2 for i in range(len(x))] for x in ids],
                              "token_bytes": [[3] * len(x) for x in ids]})
    torch.manual_seed(0)
    model = load_model(str(tiny_models[arch])).eval()
    pad = tokenizers[arch].pad_token_id
    full = sample_losses(model, data, pad, batch_size=3, chunk_tokens=0)
    head_positions = []  # what the model's own head computes: one position per sample when chunked
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: head_positions.append(o.shape[1]))
    chunked = sample_losses(model, data, pad, batch_size=3, chunk_tokens=7)  # chunks cross sample boundaries
    hook.remove()
    assert full["nats_all"].sum() > 0 and set(head_positions) == {1}
    for key, values in full.items():
        np.testing.assert_allclose(chunked[key], values, rtol=1e-6, atol=1e-6, err_msg=key)


def test_share_step0_evaluates_the_base_once_per_key(tmp_path, tiny_models):
    """eval.share_step0: a second run of the same base, eval section and held-out data copies the first's step-0
    evaluation (marked shared_from) and its figures are the ones a fresh evaluation gives; a run that differs in
    anything the evaluation depends on (here the method's rate does not; the held-out sample count does)
    evaluates again."""
    from convlearn.config import load_config
    from convlearn.experiments.run import run_training
    from helpers import run_config
    cache = tmp_path / "cache"

    def run(name, **over):
        cfg = load_config(run_config(tmp_path / f"{name}.yaml", tiny_models["qwen2"], cache,
                                     method={"name": "adamw"}, train={"max_steps": 2, **over.get("train", {})},
                                     eval={"share_step0": True, **over.get("eval", {})}))
        run_training(cfg, tmp_path / name)
        return json.loads((tmp_path / name / "evals" / "step-0.json").read_text())
    first, second = run("a"), run("b", train={"lr": 0.001})
    assert "shared_from" not in first and second["shared_from"] == next((cache / "step0").glob("*.json")).stem
    assert second["evaluations"] == first["evaluations"]
    fresh = run("c", eval={"heldout_samples": 12})
    assert "shared_from" not in fresh and len(list((cache / "step0").glob("*.json"))) == 2
    # the figures are those of an unshared evaluation of the same base
    unshared = load_config(run_config(tmp_path / "d.yaml", tiny_models["qwen2"], cache, method={"name": "adamw"},
                                      train={"max_steps": 2}))
    run_training(unshared, tmp_path / "d")
    plain = json.loads((tmp_path / "d" / "evals" / "step-0.json").read_text())
    assert plain["evaluations"]["conversation_ppl"]["all"] == first["evaluations"]["conversation_ppl"]["all"]
