"""lm-evaluation-harness offline on local copies of the five benchmarks (and mmlu_continuation), on the live tiny
model."""
import json
import math

import pytest

from benchdata import write_benchmarks
from convlearn.config import load_config
from convlearn.errors import UserError
from convlearn.eval.benchmarks import Benchmarks, lm_eval_version, local_task, mmlu_tasks


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_benchmarks(tmp_path_factory.mktemp("bench"))


def eval_cfg(bench, **extra):
    entries = ", ".join(f"{{name: {n}, data_dir: '{p}'{', num_fewshot: 5' if n == 'mmlu' else ''}}}"
                        for n, p in bench.items())
    sets = [f"eval.benchmarks=[{entries}]", "eval.lm_eval_batch_size=4", "eval.mmlu_quick_per_subject=2"]
    return load_config(None, sets + [f"eval.{k}={v}" for k, v in extra.items()]).eval


def test_local_tasks_keep_lm_evals_prompts_and_metrics(bench, tmp_path):
    from lm_eval.tasks import TaskManager
    arc = local_task("arc_challenge", bench["arc_challenge"])
    assert arc["dataset_path"] == "json" and arc["dataset_kwargs"]["data_files"]["test"].startswith("/")
    assert arc["doc_to_text"] == "Question: {{question}}\nAnswer:" and arc["task"] == "arc_challenge"
    subjects = mmlu_tasks(bench["mmlu"], tmp_path)
    assert [t["task"] for t in subjects] == ["mmlu_astronomy", "mmlu_high_school_computer_science"]
    tm = TaskManager(include_defaults=False)
    task = tm.load([subjects[0]])["tasks"]["mmlu_astronomy"]
    doc = next(iter(task.test_docs()))
    assert task.doc_to_text(doc) == "Which planet is largest? (0)\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth\nAnswer:"
    assert task.config.description.startswith("The following are multiple choice questions (with answers) about")
    assert [m["metric"] for m in task.config.metric_list] == ["acc"]


def test_all_five_benchmarks_run_offline_on_the_live_model(bench, tiny_models, tokenizers, tmp_path):
    from convlearn.models import load_model
    model = load_model(str(tiny_models["qwen2"]))
    out = Benchmarks(eval_cfg(bench), tmp_path).run(model, tokenizers["qwen2"])
    assert out["lm_eval_version"] == lm_eval_version() == "0.4.13"
    expected_n = {"mmlu": 6, "hellaswag": 4, "arc_challenge": 3, "truthfulqa_mc2": 3, "gsm8k": 3}
    for name, n in expected_n.items():
        fig = out[name]
        assert fig["n"] == n and 0.0 <= fig["score"] <= 1.0, (name, fig)
    assert set(out["mmlu"]["subjects"]) == {"astronomy", "high_school_computer_science"}
    assert out["mmlu"]["num_fewshot"] == 5
    assert out["arc_challenge"]["metric"] == "acc_norm,none" and "acc,none" in out["arc_challenge"]["metrics"]
    assert out["gsm8k"]["metric"] == "exact_match,strict-match"
    # the model's own context (4096 for the twins), not the training window: 5-shot MMLU is not cut
    assert out["max_length"] == model.config.max_position_embeddings == 4096
    # per-question results (paired tests of a change) and the chance level of multiple choice
    assert len(out["mmlu"]["correct"]) == 6 and set(out["mmlu"]["correct"]) <= {0, 1}
    assert out["mmlu"]["chance"] == pytest.approx(0.25) and out["gsm8k"]["chance"] is None
    assert sum(out["hellaswag"]["correct"]) == round(out["hellaswag"]["metrics"]["acc_norm,none"] * 4)


def test_mmlu_quick_is_a_seeded_stratified_subset_with_stderr(bench, tiny_models, tokenizers, tmp_path):
    from peft import LoraConfig, get_peft_model

    from convlearn.models import load_model
    model = get_peft_model(load_model(str(tiny_models["qwen2"])),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    cfg = eval_cfg(bench)
    a = Benchmarks(cfg, tmp_path / "a").run(model, tokenizers["qwen2"], quick_mmlu=True)["mmlu_quick"]
    b = Benchmarks(cfg, tmp_path / "b").run(model, tokenizers["qwen2"], quick_mmlu=True)["mmlu_quick"]
    assert a["n"] == 4 and {s["n"] for s in a["subjects"].values()} == {2}  # 2 per subject, on a LoRA model
    assert a == b  # fixed subset, same answers
    assert a["stderr"] == pytest.approx(math.sqrt(a["score"] * (1 - a["score"]) / 4))


def test_offline_without_a_local_copy_names_the_key(tiny_models, tokenizers, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from convlearn.data.prepare import prepare
    from convlearn.eval.suites import RunEvaluator
    from convlearn.models import model_spec
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = load_config(None, [f"model.name={tiny_models['qwen2']}", "data.sources=[{path: chatterbot}]",
                             f"data.cache_dir={tmp_path}", "eval.original=null"])
    prepared = prepare(cfg, tokenizers["qwen2"], model_spec(cfg.model.name), progress=False)
    with pytest.raises(UserError, match=r"eval.benchmarks\[0\].data_dir: the hub is offline"):
        RunEvaluator.for_run(cfg, tokenizers["qwen2"], model_spec(cfg.model.name), prepared, tmp_path)


def test_a_group_keeps_per_question_results_from_every_leaf(bench, tiny_models, tokenizers, tmp_path):
    """lm-eval logs samples per leaf task, none under a group's name: `mmlu` as lm-eval's own group (here over two
    local subject tasks, listed out of order) still yields every question, in sorted leaf then doc order."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from convlearn.eval.benchmarks import _task_figures
    from convlearn.models import load_model
    leaves = mmlu_tasks(bench["mmlu"], tmp_path / "work")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for leaf in leaves:  # JSON is YAML: the leaves' definitions as lm-eval resolved them
        (tasks / f"{leaf['task']}.yaml").write_text(json.dumps(leaf))
    (tasks / "mmlu.yaml").write_text(json.dumps({
        "group": "mmlu", "task": [t["task"] for t in reversed(leaves)],
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}]}))
    model = load_model(str(tiny_models["qwen2"]))
    lm = Benchmarks(eval_cfg(bench), tmp_path)._wrap(model, tokenizers["qwen2"])
    res = lm_eval.simple_evaluate(model=lm, tasks=["mmlu"], num_fewshot=0, bootstrap_iters=0, log_samples=True,
                                  task_manager=TaskManager(include_path=str(tasks), include_defaults=False))
    assert "mmlu" not in res["samples"]  # the reason: nothing is logged under the group itself
    fig = _task_figures(res, "mmlu", 0, None)
    expected = [int(s["acc"]) for leaf in sorted(t["task"] for t in leaves)
                for s in sorted(res["samples"][leaf], key=lambda s: s["doc_id"])]
    assert fig["n"] == 6 and fig["correct"] == expected and len(expected) == 6
    assert fig["chance"] == pytest.approx(0.25)
    assert fig["score"] == pytest.approx(sum(expected) / 6)


def test_mmlu_continuation_scores_each_choices_text_with_every_question_kept(tiny_models, tokenizers, tmp_path):
    """lm-eval's continuation variant of the MMLU subjects on the world-facts copy: each choice's text after
    "Question: ...\\nAnswer:", acc as the headline, one result per question of every subject."""
    from lm_eval.tasks import TaskManager

    from convlearn.data.world_facts import write_world_facts
    from convlearn.eval.evaluations.benchmarks import LmEvalBenchmarks
    from convlearn.eval.records import EvalRecord
    from convlearn.models import load_model
    data = write_world_facts(tmp_path / "facts", questions=2, shots=1)
    tasks = mmlu_tasks(data, tmp_path / "work", continuation=True)
    assert [t["task"] for t in tasks] == ["mmlu_global_facts_continuation",
                                          "mmlu_high_school_geography_continuation"]
    task = TaskManager(include_defaults=False).load([tasks[1]])["tasks"]["mmlu_high_school_geography_continuation"]
    doc = next(iter(task.test_docs()))
    assert task.doc_to_text(doc) == f"Question: {doc['question']}\nAnswer:"
    assert task.doc_to_choice(doc) == doc["choices"]  # the text, not the letter
    cfg = load_config(None, [f"eval.benchmarks=[{{name: mmlu_continuation, num_fewshot: 0, data_dir: '{data}'}}]",
                             "eval.lm_eval_batch_size=4", "eval.criteria.retention_benchmark=mmlu_continuation"]).eval
    LmEvalBenchmarks().check_offline(cfg)  # a local copy is enough offline
    out = Benchmarks(cfg, tmp_path / "run").run(load_model(str(tiny_models["qwen2"])), tokenizers["qwen2"])
    fig = out["mmlu_continuation"]
    assert fig["metric"] == "acc,none" and fig["n"] == 6 and len(fig["correct"]) == 6  # 2 per kind
    assert set(fig["correct"]) <= {0, 1} and fig["score"] == pytest.approx(sum(fig["correct"]) / 6)
    assert {s: f["n"] for s, f in fig["subjects"].items()} == {"global_facts": 2, "high_school_geography": 4}
    assert set(fig["subjects"]["global_facts"]) == {"acc", "acc_norm", "n"}  # both of lm-eval's figures kept
    assert fig["chance"] == pytest.approx(0.25) and fig["num_fewshot"] == 0
    # the retention benchmark the verdicts and the gate read, with its per-question results
    score, kind, whole = EvalRecord(0, evaluations={"benchmarks": out}).retention(cfg.criteria.retention_benchmark)
    assert (score, kind, whole["correct"]) == (fig["score"], "benchmarks", fig["correct"])


def test_a_subject_that_mmlu_lacks_is_refused(tmp_path):
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "What is the capital of Kenya?",
                                                     "subject": "world_capitals", "answer": 0,
                                                     "choices": ["Nairobi", "Kampala", "Lima", "Rome"]}) + "\n")
    with pytest.raises(UserError, match="mmlu_continuation: unknown subject 'world_capitals'"):
        mmlu_tasks(tmp_path, tmp_path / "work", continuation=True)
