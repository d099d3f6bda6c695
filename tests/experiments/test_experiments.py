"""Sweeps, reports (figures equal the ones recomputed from the raw files), online streaming, topic labels."""
import csv
import json
from pathlib import Path

import pytest

from convlearn.errors import ConfigError
from convlearn.experiments.sweep import PACKAGED, load_sweep, run_sweep
from helpers import run_config

ROOT = Path(__file__).resolve().parents[2]


def write_base(tmp_path, tiny_models):
    return run_config(tmp_path / "base.yaml", tiny_models["qwen2"], tmp_path / "cache")


SWEEPS = sorted([*(ROOT / "configs" / "experiments").glob("*.yaml"),
                 *(p for p in (PACKAGED / "tiny").glob("*.yaml") if p.name != "base.yaml")])


def test_the_shipped_experiments_are_the_four_plus_levers():
    assert sorted(p.name for p in SWEEPS) == sorted(
        ["data_scaling.yaml", "online.yaml", "optimizers.yaml", "replay.yaml"] * 2 + ["levers.yaml"])


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_experiments_validate(path):
    sweep = load_sweep(path)
    assert sweep.runs and sweep.experiment in ("optimizers", "data_scaling", "online", "replay")


def test_sweep_expands_grids_and_seeds_and_knows_run_states(tmp_path, tiny_models):
    write_base(tmp_path, tiny_models)
    spec = tmp_path / "exp.yaml"
    spec.write_text("""name: t
experiment: replay
base: base.yaml
set: [train.max_steps=2]
grid:
  method: [{name: a, set: [method.name=adamw]}, {name: g, set: [method.name=galore]}]
  replay: [{name: r0, set: [replay.ratio=0.0]}]
seeds: [0, 1]
""")
    sweep = load_sweep(spec)
    assert [r.name for r in sweep.runs] == ["a-r0-s0", "a-r0-s1", "g-r0-s0", "g-r0-s1"]
    assert sweep.runs[1].overrides == ["train.max_steps=2", "method.name=adamw", "replay.ratio=0.0", "seed=1"]
    out = tmp_path / "runs"
    (out / "a-r0-s0").mkdir(parents=True)
    (out / "a-r0-s0" / "summary.json").write_text("{}")
    ck = out / "a-r0-s1" / "checkpoints" / "step-00000001"
    ck.mkdir(parents=True)
    (ck / "COMPLETE").write_text("{}")
    plan = run_sweep(spec, out, dry_run=True)["runs"]
    assert plan == {"a-r0-s0": "finished", "a-r0-s1": "interrupted", "g-r0-s0": "new", "g-r0-s1": "new"}
    spec.write_text(spec.read_text().replace("replay.ratio=0.0", "replay.ratio=2"))
    with pytest.raises(ConfigError, match=r"replay.ratio: must be <= 0.9"):
        load_sweep(spec)


@pytest.mark.slow
def test_report_figures_equal_the_raw_files(tmp_path, tiny_models):
    write_base(tmp_path, tiny_models)
    spec = tmp_path / "exp.yaml"
    spec.write_text("""name: opt
experiment: optimizers
base: base.yaml
runs: [{name: adamw, set: [method.name=adamw]}, {name: galore-r8, set: [method.name=galore]},
       {name: lora, set: [method.name=lora, method.lora_rank=4]}]
""")
    result = run_sweep(spec, tmp_path / "runs")
    assert result["runs"] == {"adamw": 0, "galore-r8": 0, "lora": 0}
    from convlearn.experiments.report import write_report
    summary = write_report([tmp_path / "runs" / n for n in ("adamw", "galore-r8", "lora")], tmp_path / "report",
                           "optimizers")
    rows = list(csv.DictReader(open(tmp_path / "report" / "figures.csv")))
    fig = {(r["run"], r["figure"]): r["value"] for r in rows}
    for run in ("adamw", "galore-r8"):
        evals = [json.loads((tmp_path / "runs" / run / "evals" / f"step-{s}.json").read_text()) for s in (0, 6)]
        p0, p1 = (e["evaluations"]["conversation_ppl"]["all"]["ppl"] for e in evals)
        assert float(fig[(run, "conversation_ppl_all_change")]) == pytest.approx((p1 - p0) / p0)
        a0, a1 = (e["evaluations"]["conversation_ppl"]["assistant"]["ppl"] for e in evals)
        assert float(fig[(run, "conversation_ppl_change")]) == pytest.approx((a1 - a0) / a0)  # the criterion's
        metrics = [json.loads(x) for x in (tmp_path / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        summ = json.loads((tmp_path / "runs" / run / "summary.json").read_text())
        mem = metrics[-1]["memory"]["model_param_bytes"] + summ["peak_memory"]["grad_bytes_peak"] + \
            summ["peak_memory"]["optimizer_state_bytes"]
        assert int(fig[(run, "training_state_bytes")]) == mem
        t = summ["throughput"]  # tokens over training wall time (evaluation excluded), not a mean of step rates
        assert float(fig[(run, "tokens_per_s")]) == pytest.approx(summ["tokens_per_s"])
        assert summ["tokens_per_s"] == pytest.approx(t["tokens"] / t["train_seconds"])
        assert t["tokens"] == sum(t["step_tokens"]) and t["train_seconds"] >= sum(t["step_seconds"])
    ratio = float(fig[("galore-r8", "peak_memory_bytes")]) / float(fig[("adamw", "peak_memory_bytes")])
    assert float(fig[("galore-r8", "memory_vs_adamw")]) == pytest.approx(ratio)
    assert fig[("galore-r8", "peak_memory_source")] == "counted state + measured activations"
    assert int(fig[("galore-r8", "peak_memory_bytes")]) == int(fig[("galore-r8", "training_state_bytes")]) + \
        int(fig[("galore-r8", "activation_bytes_peak")])
    crit = summary["criteria"]["galore-r8"]
    assert crit["memory"]["verdict"] == ("pass" if ratio < 0.5 else "fail")
    assert crit["retention"]["verdict"] == "not measured"
    for point, verdicts in summary["criteria"].items():  # every decided verdict follows from its interval
        v = verdicts["conversation_ppl"]
        lo, hi = v["interval"]
        assert v["verdict"] == ("pass" if hi < -0.15 else "fail" if lo > -0.15 else "inconclusive"), point
    hyp = summary["hypothesis"]["verdicts"]["galore-r8"]
    lo, hi = hyp["interval"]
    assert lo <= hi and (hyp["verdict"] == "fail" if hi < 0.9 else hyp["verdict"] in ("pass", "inconclusive",
                                                                                      "fail"))
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Verdicts against the success criteria" in text and "![learning_curves]" in text


def test_online_stream_trains_each_conversation_once_in_arrival_order(tmp_path, tiny_models):
    from convlearn.config import load_config
    from convlearn.experiments.run import run_training
    base = write_base(tmp_path, tiny_models)
    cfg = load_config(base, ["train.order=by_domain", "train.single_pass=true", "train.max_steps=100000",
                             "train.batch_size=2", "data.max_conversations=200", "eval.every=10",
                             "eval.every_suite=quick", "eval.suites.quick=[domain_ppl]", "eval.domain_by=[domain]",
                             "method.name=adamw"])
    summary = run_training(cfg, tmp_path / "online")
    metrics = [json.loads(x) for x in (tmp_path / "online" / "metrics.jsonl").read_text().splitlines()]
    pos = [m["data"]["pos"] for m in metrics]
    assert pos == [min(2 * (i + 1), pos[-1]) for i in range(len(pos))]  # never ahead of the stream
    assert all(m["data"]["epoch"] == 0 for m in metrics) and summary.steps == len(metrics)
    domains = [m["data"]["domain"] for m in metrics]
    first_seen = list(dict.fromkeys(domains))
    assert domains == sorted(domains, key=first_seen.index)  # grouped by domain: topic shifts
    adapt = json.loads((tmp_path / "online" / "adaptation.json").read_text())
    assert len(adapt["phases"]) == len(first_seen) >= 3
    bwt = json.loads((tmp_path / "online" / "forgetting.json").read_text())["backward_transfer"]
    assert bwt["bwt_loss"] is not None and len(bwt["per_domain"]) >= 1
    assert summary.backward_transfer == bwt
    for sw in adapt["switches"]:
        assert sw["step"] in [p["start"] for p in adapt["phases"]]
        assert set(sw) >= {"steps_to_50", "steps_to_90", "old_domains_loss_change"}


def test_topic_labeler_finds_themes_and_names_them(tmp_path):
    from convlearn.data.topics import TopicLabeler
    themes = {"cooking": ["How long should I bake bread dough in the oven?", "What spices go well in a curry?",
                          "How do I boil pasta without it sticking?", "Can I replace butter with oil in cake?"],
              "code": ["How do I reverse a list in Python?", "Why does my Java program throw a null pointer?",
                       "What is a closure in JavaScript?", "How do I write a SQL join query?"],
              "space": ["How far away is the Moon from Earth?", "What is a black hole made of?",
                        "Why does Mars look red in the night sky?", "How many planets orbit the Sun?"]}
    texts = [t for ts in themes.values() for t in ts]
    truth = [name for name, ts in themes.items() for _ in ts]
    lab = TopicLabeler(3, seed=0)
    labels = lab.fit(texts)
    clusters = {}
    for t, label in zip(truth, labels):
        clusters.setdefault(label, []).append(t)
    purity = sum(max(v.count(t) for t in set(v)) for v in clusters.values()) / len(texts)
    assert len(clusters) == 3 and purity >= 10 / 12, clusters  # clusters follow the themes
    code_cluster = max(clusters, key=lambda c: clusters[c].count("code"))
    assert lab.label(["How do I sort a dictionary in Python?"])[0] == code_cluster
    again = TopicLabeler.from_state(json.loads(json.dumps(lab.state())))
    assert again.label(texts) == labels


@pytest.fixture(scope="module")
def demo_assets(tmp_path_factory, tiny_models):
    """What `convlearn demo` builds for the tiny experiments, at a fraction of the size."""
    from convlearn.data.docstring_cloze import write_docstring_cloze
    from convlearn.data.probes import write_probes
    from convlearn.demos.base import pretrain_base
    root = tmp_path_factory.mktemp("demo-assets")
    from convlearn.demos.offline import write_canaries
    pretrain_base(root, tiny_models["qwen2"], steps=5)
    write_probes(root / "probes", n=10, seed=0, mentions=2)
    write_canaries(root / "canaries")
    write_docstring_cloze(root / "retention", questions=40, documents=600)
    return root


def _tiny_sweep(root, demo_assets, name, **extra):
    """A shipped tiny experiment, shortened to a few steps per run, through `convlearn sweep`."""
    import subprocess
    import sys

    import yaml
    src = PACKAGED / "tiny"
    root.mkdir(parents=True, exist_ok=True)
    (root / "base.yaml").write_text((src / "base.yaml").read_text().replace("runs/demo/", f"{demo_assets}/"))
    spec = {**yaml.safe_load((src / f"{name}.yaml").read_text()), **extra}
    spec["set"] = [o.replace("runs/demo/", f"{demo_assets}/") for o in spec.get("set", [])] + [  # last: they win
        "train.max_steps=3", "train.save_every=0", f"data.cache_dir={root / 'cache'}", "eval.heldout_samples=16",
        "eval.original.limit=200", "eval.suites.full=[conversation_ppl, original_ppl]", "logging.tensorboard=false"]
    (root / "exp.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    res = subprocess.run([sys.executable, "-m", "convlearn", "sweep", str(root / "exp.yaml"), "--out",
                          str(root / "runs")], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    verdicts = json.loads((root / "runs" / "report" / "verdicts.json").read_text())
    assert verdicts["runs"] == [r.name for r in load_sweep(root / "exp.yaml").runs]
    assert verdicts["hypothesis"]["statement"]
    for run in verdicts["runs"]:  # every run got the shortening, not only the first grid point
        assert json.loads((root / "runs" / run / "summary.json").read_text())["steps"] <= 3
    return root / "runs", verdicts


@pytest.fixture(scope="module")
def tiny_optimizers(tmp_path_factory, demo_assets):
    """Experiment 1 at tiny scale, its learning-rate search included (two rates, two-step pilots), on three of
    its points (AdamW, LoRA, layer-wise GaLore r=32: one of each kind of method, to keep the suite short; it is the
    point whose rate the later experiments take)."""
    import yaml
    grid = yaml.safe_load((PACKAGED / "tiny" / "optimizers.yaml").read_text())["grid"]
    grid["method"] = [p for p in grid["method"] if p["name"] in ("adamw", "lora-r16", "galore-r32-lw-proj")]
    return _tiny_sweep(tmp_path_factory.mktemp("tiny-optimizers"), demo_assets, "optimizers",
                       lr_search={"factors": [1, 3], "steps": 2}, grid=grid)


@pytest.mark.slow
def test_tiny_optimizers_tune_each_method_then_compare(tiny_optimizers):
    from convlearn.config import load_config
    runs, verdicts = tiny_optimizers
    choice = json.loads((runs / "lr_choice.json").read_text())
    assert len(choice["methods"]) == 3 and choice["steps"] == 2
    test_ids = set(json.loads((runs / verdicts["runs"][0] / "evals" / "step-0.json").read_text())
                   ["evaluations"]["conversation_ppl"]["per_sample"]["ids"])
    for label, m in choice["methods"].items():
        assert len(m["curve"]) == 2 and m["lr"] == min(m["curve"], key=lambda c: c["ppl"])["lr"]
        for c in m["curve"]:  # selection scored a validation slice, never the report's test conversations
            assert c["original_ppl"] > 1 and "retention" in c  # and its retention beside its perplexity
            pilot = json.loads(next(Path(c["run"], "evals").glob("step-*.json")).read_text())["evaluations"]
            ids = set(pilot["conversation_ppl"]["per_sample"]["ids"])
            assert ids and not ids & test_ids
    assert choice["metric"].startswith("validation")
    for run in verdicts["runs"]:  # each run trained at the rate its method's pilots picked
        cfg = load_config(runs / run / "config.yaml")
        from convlearn.train.methods import method_for
        assert cfg.train.lr == choice["by_label"][method_for(cfg.method).label]
    report = (runs / "report" / "report.md").read_text()
    assert "## Learning rates" in report and "lr_sensitivity.png" in verdicts["plots"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["data_scaling", "online", "replay"])
def test_tiny_experiments_take_the_tuned_rates(tmp_path, demo_assets, tiny_optimizers, name):
    runs, _ = tiny_optimizers
    out, verdicts = _tiny_sweep(tmp_path, demo_assets, name, lr_from=str(runs / "lr_choice.json"))
    choice = json.loads((runs / "lr_choice.json").read_text())["by_label"]
    from convlearn.config import load_config
    from convlearn.train.methods import method_for
    for run in verdicts["runs"]:
        cfg = load_config(out / run / "config.yaml")
        assert cfg.train.lr == choice[method_for(cfg.method).label]


def test_topics_become_domains_of_sources_without_topics(tmp_path, tiny_models, tokenizers):
    import datafiles as F
    from convlearn.config import load_config
    from convlearn.data.prepare import prepare
    from convlearn.models import model_spec
    themes = ["bake bread in the oven with flour and yeast", "debug python code with a stack trace",
              "the moon orbits the earth and the planets orbit the sun"]
    rows = [{"conversation_id": f"c{i}", "conversation": [
        {"role": "user", "content": f"Tell me how to {themes[i % 3]} ({i})"},
        {"role": "assistant", "content": "Sure."}]} for i in range(30)]
    path = F.write_jsonl(tmp_path / "lmsys.jsonl", rows)
    cfg = load_config(None, [f"model.name={tiny_models['qwen2']}", f"data.sources=[{{path: {path}}}, "
                             "{path: chatterbot, limit: 20}]", "data.heldout_fraction=0.0",
                             f"data.cache_dir={tmp_path / 'cache'}", "data.topics.k=3", "render.max_seq_len=64"])
    meta = prepare(cfg, tokenizers["qwen2"], model_spec(cfg.model.name), progress=False)
    train = meta.dataset("train")
    by_id = dict(zip(train["conversation_id"], train["domain"]))
    assert len(meta.meta["topics"]["names"]) == 3
    topic_of = {i: by_id[f"c{i}"] for i in range(30)}
    assert all(topic_of[i] == topic_of[i % 3] for i in range(30))  # same theme, same topic
    assert len({topic_of[0], topic_of[1], topic_of[2]}) == 3
    assert {by_id[c] for c in by_id if c.startswith("chatterbot/")} <= {"ai", "botprofile"}  # own topics kept
    assert list((tmp_path / "cache").glob("topics-*.json"))
