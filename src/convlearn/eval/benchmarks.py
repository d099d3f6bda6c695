"""lm-evaluation-harness on the live model (HFLM wraps it; LoRA included), by the real task names.

Offline: the built-in tasks download their data from the hub. Given a local copy of a task's data in the hub
dataset's schema (`data_dir` with one file per split), we load lm-eval's own task definition (its YAML with
includes and `!function`s resolved, so prompts, few-shot setup and metrics are the real ones) and point its
dataset at the local files with absolute paths, generated at run time. MMLU's 57 subject tasks are built from
one local copy of `cais/mmlu` ("all": rows carry their `subject`) and aggregated weighted by size, as lm-eval's
`mmlu` group does. `mmlu_continuation` is the same data through lm-eval's continuation variant of each subject
(`mmlu/continuation/`: "Question: ...\nAnswer:" and each choice's own text scored, not its letter), the variant a
small base can answer (data/world_facts.py).
"""
from __future__ import annotations

import json
import math
import random
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from ..errors import UserError

TASK_YAML = {"hellaswag": "hellaswag/hellaswag.yaml", "arc_challenge": "arc/arc_challenge.yaml",
             "truthfulqa_mc2": "truthfulqa/truthfulqa_mc2.yaml", "gsm8k": "gsm8k/gsm8k.yaml"}
# mmlu_continuation: acc (each choice's summed log-likelihood), as lm-eval's own mmlu_continuation group aggregates.
# Not acc_norm (per byte): it rewards a choice whose later tokens follow from its first ("North America": "America"
# is near certain after "North"): on the world-facts continent questions it took the real Gemma-3-270M base from
# 86% to 60%, while its capitals (94% both) and currencies (72% / 74%) barely moved.
HEADLINE_METRIC = {"mmlu": "acc,none", "mmlu_continuation": "acc,none", "hellaswag": "acc_norm,none",
                   "arc_challenge": "acc_norm,none", "truthfulqa_mc2": "acc,none",
                   "gsm8k": "exact_match,strict-match"}

if TYPE_CHECKING:
    from ..config import EvalConfig
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


def lm_eval_version() -> str:
    return version("lm_eval")


def _tasks_dir() -> Path:
    import lm_eval.tasks  # lm-eval: 3.4 s to import, only when a benchmark runs (here and below)
    return Path(lm_eval.tasks.__file__).parent


def _load_task_yaml(relpath: str) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval's own loader: includes + !function
    return load_yaml(_tasks_dir() / relpath)


def read_split_file(data_dir: Path, split: str) -> Path | None:
    for suffix in (".jsonl", ".json", ".parquet"):
        if (data_dir / f"{split}{suffix}").is_file():
            return (data_dir / f"{split}{suffix}").resolve()
    return None


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _local(config: dict, data_files: dict[str, str]) -> dict:
    config = dict(config)
    config.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": data_files})
    config.pop("tag", None)
    return config


def local_task(name: str, data_dir: str | Path) -> dict:
    """lm-eval's definition of `name` with its dataset pointed at local files (absolute paths)."""
    data_dir = Path(data_dir)
    config = _load_task_yaml(TASK_YAML[name])
    data_files = {}
    for key in SPLIT_KEYS:
        split = config.get(key)
        if split and split not in data_files:
            found = read_split_file(data_dir, split)
            if found is not None:
                data_files[split] = str(found)
    eval_split = config.get("test_split") or config.get("validation_split")
    if eval_split not in data_files:
        raise UserError(f"{name}: no {eval_split}.jsonl / .json / .parquet in {data_dir}")
    for key in SPLIT_KEYS:  # a split the local copy lacks is not used (e.g. no train split: no few-shot pool)
        if config.get(key) and config[key] not in data_files:
            config[key] = None
    return _local(config, data_files)


MMLU_VARIANTS = {"mmlu": ("default", ""), "mmlu_continuation": ("continuation", "_continuation")}


def mmlu_tasks(data_dir: str | Path, work: Path, per_subject: int | None = None, seed: int = 0,
               continuation: bool = False) -> list[dict]:
    """One lm-eval task per MMLU subject present in the local copy (test split, dev split for few-shot),
    optionally a fixed seeded subset of `per_subject` test questions per subject (the quick-eval); lm-eval's
    `mmlu_continuation` definitions (the choices' text scored) when `continuation`, else `mmlu`'s (the letter)."""
    name = "mmlu_continuation" if continuation else "mmlu"
    folder_of, _ = MMLU_VARIANTS[name]
    data_dir = Path(data_dir)
    test = read_split_file(data_dir, "test")
    if test is None:
        raise UserError(f"{name}: no test.jsonl / .json / .parquet in {data_dir}")
    dev = read_split_file(data_dir, "dev")
    by_subject: dict[str, dict[str, list]] = {}
    for split, path in (("test", test), ("dev", dev)):
        for row in _rows(path) if path else []:
            by_subject.setdefault(row["subject"], {"test": [], "dev": []})[split].append(row)
    tasks = []
    rng = random.Random(seed)
    for subject in sorted(by_subject):
        rows = by_subject[subject]
        if not rows["test"]:
            continue
        test_rows = rows["test"]
        if per_subject is not None and len(test_rows) > per_subject:
            picked = sorted(rng.sample(range(len(test_rows)), per_subject))
            test_rows = [test_rows[i] for i in picked]
        yaml_path = f"mmlu/{folder_of}/mmlu_{subject}.yaml"
        if not (_tasks_dir() / yaml_path).is_file():
            raise UserError(f"{name}: unknown subject {subject!r} in {data_dir}")
        folder = work / ("mmlu_quick" if per_subject else name) / subject
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for split, split_rows in (("test", test_rows), ("dev", rows["dev"])):
            if split_rows:
                (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split_rows))
                files[split] = str((folder / f"{split}.jsonl").resolve())
        config = _local(_load_task_yaml(yaml_path), files)
        if "dev" not in files:
            config["fewshot_split"] = None
        tasks.append(config)
    return tasks


class Benchmarks:
    """Runs benchmarks on one in-memory model; the HFLM wrapper is built once and reused across suites."""

    def __init__(self, eval_cfg: EvalConfig, work_dir: Path):
        self.cfg = eval_cfg
        self.max_length = eval_cfg.lm_eval_max_length
        self.work = Path(work_dir)
        self._lm = None
        self._model_id = None

    def _wrap(self, model, tokenizer):
        if self._lm is None or self._model_id != id(model):
            from lm_eval.models.huggingface import HFLM
            # the model's own context unless set: a 5-shot prompt must not be cut to the training window
            if self.cfg.lm_eval_max_length is None:
                self.max_length = getattr(model.config, "max_position_embeddings", None) or 2048
            self._lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.cfg.lm_eval_batch_size,
                            max_length=self.max_length)
            self._model_id = id(model)
        return self._lm

    def _evaluate(self, lm, tasks: list, num_fewshot: int | None, limit: int | None) -> dict:
        import lm_eval
        from lm_eval.tasks import TaskManager
        online = all(isinstance(t, str) for t in tasks)
        tm = TaskManager() if online else TaskManager(include_defaults=False)
        return lm_eval.simple_evaluate(
            model=lm, tasks=tasks, task_manager=tm, num_fewshot=num_fewshot, limit=limit, bootstrap_iters=0,
            log_samples=True, apply_chat_template=self.cfg.apply_chat_template,
            fewshot_as_multiturn=self.cfg.fewshot_as_multiturn, random_seed=0, numpy_random_seed=0,
            torch_random_seed=0, fewshot_random_seed=0)

    def run(self, model, tokenizer, quick_mmlu: bool = False) -> dict:
        """All configured benchmarks, or only the MMLU quick-eval. Figures carry their sample counts."""
        lm = self._wrap(model, tokenizer)
        out = {"lm_eval_version": lm_eval_version(), "apply_chat_template": self.cfg.apply_chat_template,
               "fewshot_as_multiturn": self.cfg.fewshot_as_multiturn, "max_length": self.max_length}
        entries = [b for b in self.cfg.benchmarks if b.name == "mmlu"] if quick_mmlu else self.cfg.benchmarks
        if quick_mmlu and not entries:
            raise UserError("eval: mmlu_quick needs an `mmlu` entry in eval.benchmarks (for its data)")
        for b in entries:
            shots = b.num_fewshot
            if b.name in MMLU_VARIANTS and (b.data_dir or quick_mmlu):
                if not b.data_dir:
                    raise UserError("eval.benchmarks: mmlu_quick needs the mmlu entry's data_dir offline")
                per = self.cfg.mmlu_quick_per_subject if quick_mmlu else None
                tasks = mmlu_tasks(b.data_dir, self.work, per, continuation=b.name == "mmlu_continuation")
                res = self._evaluate(lm, tasks, shots, None if quick_mmlu else b.limit)
                out["mmlu_quick" if quick_mmlu else b.name] = _aggregate_mmlu(
                    res, [t["task"] for t in tasks], b.name, shots, per)
            elif b.data_dir:
                res = self._evaluate(lm, [local_task(b.name, b.data_dir)], shots, b.limit)
                out[b.name] = _task_figures(res, b.name, shots, b.limit)
            elif b.name == "mmlu_continuation":  # the group from the hub: its subjects' figures from its leaves
                res = self._evaluate(lm, [b.name], shots, b.limit)
                out[b.name] = _aggregate_mmlu(res, leaf_tasks(res, b.name), b.name, shots, None)
            else:
                res = self._evaluate(lm, [b.name], shots, b.limit)
                out[b.name] = _task_figures(res, b.name, shots, b.limit)
        return out


def _n(res: dict, task: str) -> int:
    n = res.get("n-samples", {}).get(task, {})
    return int(n.get("effective", n.get("original", 0)))


def leaf_tasks(res: dict, name: str) -> list[str]:
    """The leaf tasks under `name`, sorted: lm-eval logs samples per leaf (a group such as `mmlu` has none of
    its own), and sorting fixes the order so two evaluations' per-question lists pair up."""
    children = res.get("group_subtasks", {})
    if name not in children:
        return [name]
    return sorted({leaf for child in children[name] for leaf in leaf_tasks(res, child)})


def _per_question(samples: list[dict], metric: str) -> tuple[list[int], list[float | None]]:
    """Each question's score (1 right, 0 wrong; in doc order, so two evaluations of the same data pair up) and
    its chance level (1 / choices for multiple choice; None for generation)."""
    rows = sorted(samples, key=lambda s: s["doc_id"])
    key = metric.split(",")[0]
    rows = [s for s in rows if key in s]
    chances = [1 / len(s["arguments"]) if len(s.get("arguments", [])) > 1 else None for s in rows]
    return [int(round(float(s[key]))) for s in rows], chances


def _collect(res: dict, leaves: list[str], metric: str) -> tuple[list[int], float | None]:
    """Per-question results over `leaves` in their order, then doc id, and the mean chance level (None unless
    every question is multiple choice)."""
    correct, chances = [], []
    for leaf in leaves:
        right, chance = _per_question(res.get("samples", {}).get(leaf, []), metric)
        correct += right
        chances += chance
    return correct, (sum(chances) / len(chances) if chances and None not in chances else None)


def _task_figures(res: dict, name: str, shots, limit) -> dict:
    metrics = {k: v for k, v in res["results"][name].items()
               if isinstance(v, (int, float)) and "stderr" not in k and k != "alias"}
    score = metrics.get(HEADLINE_METRIC[name])
    leaves = leaf_tasks(res, name)
    correct, chance = _collect(res, leaves, HEADLINE_METRIC[name])
    n = sum(_n(res, leaf) for leaf in leaves)
    return {"score": score, "metric": HEADLINE_METRIC[name], "metrics": metrics, "n": n,
            "stderr": _binomial_se(score, n), "chance": chance, "correct": correct, "num_fewshot": shots,
            "limit": limit}


def _aggregate_mmlu(res: dict, leaves: list[str], name: str, shots, per_subject) -> dict:
    """The subject tasks `leaves` of `mmlu` or `mmlu_continuation` (run without lm-eval's group) aggregated here,
    weighted by size as the group does; every figure of each subject is kept."""
    leaves = sorted(leaves)
    metric = HEADLINE_METRIC[name]
    _, suffix = MMLU_VARIANTS[name]
    subjects = {}
    for t in leaves:
        figures = {k.split(",")[0]: v for k, v in res["results"][t].items()
                   if isinstance(v, (int, float)) and "stderr" not in k and k != "sample_len"}
        subjects[t.removeprefix("mmlu_").removesuffix(suffix)] = {**figures, "n": _n(res, t)}
    correct, chance = _collect(res, leaves, metric)
    n = sum(s["n"] for s in subjects.values())
    key = metric.split(",")[0]
    score = sum(s[key] * s["n"] for s in subjects.values()) / n if n else float("nan")
    return {"score": score, "metric": metric, "n": n, "stderr": _binomial_se(score, n), "chance": chance,
            "correct": correct, "num_fewshot": shots, "subjects": subjects, "per_subject": per_subject}


def _binomial_se(p, n: int):
    """Standard error of an accuracy over n questions (lm-eval's own is off with bootstrap_iters=0)."""
    if p is None or not n or not (0 <= p <= 1):
        return None
    return math.sqrt(p * (1 - p) / n)
