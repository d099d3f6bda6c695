"""`convlearn sweep EXPERIMENT.yaml`: a base run config plus a grid and/or list of overrides -> named runs.

Finished runs (summary.json) are skipped, interrupted ones (checkpoints, no summary) resumed, the rest started.
Runs go one after another, or side by side over the GPUs given (one GPU per run via CUDA_VISIBLE_DEVICES).
Each run is its own `convlearn train` process, so a crash in one never takes the sweep down.

    name: replay                       # experiment name (report title)
    experiment: replay                 # optimizers | data_scaling | online | replay (which verdicts apply)
    hypothesis: "10% replay significantly reduces forgetting"
    base: ../lmsys-qwen2.5-1.5b.yaml   # run config, relative to this file
    set: [train.max_steps=5000]        # overrides for every run
    grid:                              # cartesian product of named points
      replay: [{name: r0, set: [replay.ratio=0.0]}, {name: r10, set: [replay.ratio=0.1]}]
    runs: [{name: extra, set: [...]}]  # explicit runs, in addition to the grid
    seeds: [0, 1]                      # several seeds per point (suffix -s<seed>)
    lr_search: {factors: [0.5, 1, 2], steps: 300}   # tune each point's train.lr first (experiments/lr_search.py)
    lr_from: runs/optimizers/lr_choice.json         # or take the rates an earlier search picked, by method

The tiny offline experiments ship inside the package (`convlearn sweep tiny/optimizers`, after `make demo`
built their base model in runs/demo).
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import load_config
from ..errors import ConfigError, UserError
from ..eval.evaluations import check_suites
from ..train.checkpoint import latest_checkpoint
from ..train.methods import method_for
from . import registry
from .lr_search import LRSearch, lr_from, run_pilots


@dataclass
class SweepRun:
    name: str
    overrides: list[str]
    point: dict = field(default_factory=dict)  # axis -> point name, for the report


@dataclass
class Sweep:
    name: str
    experiment: str
    hypothesis: str
    base: Path
    runs: list[SweepRun]
    path: Path
    lr_search: LRSearch | None = None
    lr_from: str | None = None


def _points(items, where: str) -> list[dict]:
    if not isinstance(items, list) or not items:
        raise ConfigError(where, "must be a non-empty list of {name, set}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"{where}[{i}]", "needs a name (and a `set` list of overrides)")
        sets = item.get("set", [])
        if not isinstance(sets, list) or not all(isinstance(s, str) and "=" in s for s in sets):
            raise ConfigError(f"{where}[{i}].set", "must be a list of key.path=value strings")
        out.append({"name": str(item["name"]), "set": sets})
    return out


PACKAGED = Path(__file__).parent  # tiny/*.yaml ship as package data


def sweep_path(name: str | Path) -> Path:
    """A sweep file: a path, or the name of a packaged one (`tiny/optimizers`)."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = PACKAGED / (str(name) if str(name).endswith(".yaml") else f"{name}.yaml")
    if packaged.is_file():
        return packaged
    shipped = ", ".join(f"tiny/{p.stem}" for p in sorted((PACKAGED / "tiny").glob("*.yaml")) if p.stem != "base")
    raise UserError(f"sweep file not found: {path} (packaged experiments: {shipped})")


def load_sweep(path: str | Path) -> Sweep:
    path = sweep_path(path)
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise ConfigError(str(path), "not valid YAML") from None
    known = {"name", "experiment", "hypothesis", "base", "set", "grid", "runs", "seeds", "lr_search", "lr_from"}
    for key in spec:
        if key not in known:
            raise ConfigError(key, f"unknown sweep key (known: {', '.join(sorted(known))})")
    if "base" not in spec:
        raise ConfigError("base", "is required: the run config every run starts from")
    base = (path.parent / spec["base"]).resolve()
    if not base.is_file():
        raise ConfigError("base", f"no such run config: {base}")
    experiment = registry.experiment(spec.get("experiment", "custom")).name
    common = spec.get("set", [])
    grid = spec.get("grid") or {}
    axes = [(axis, _points(items, f"grid.{axis}")) for axis, items in grid.items()]
    combos = []
    for choice in itertools.product(*[pts for _, pts in axes]) if axes else []:
        combos.append(("-".join(p["name"] for p in choice), [s for p in choice for s in p["set"]],
                       {axis: p["name"] for (axis, _), p in zip(axes, choice)}))
    for p in _points(spec["runs"], "runs") if spec.get("runs") else []:
        combos.append((p["name"], p["set"], {"run": p["name"]}))
    if not combos:
        raise ConfigError("grid", "a sweep needs a grid or a runs list")
    seeds = spec.get("seeds", [None])
    runs = []
    for name, sets, point in combos:
        for seed in seeds:
            extra = [f"seed={seed}"] if seed is not None else []
            run_name = f"{name}-s{seed}" if seed is not None and len(seeds) > 1 else name
            runs.append(SweepRun(run_name, [*common, *sets, *extra], {**point, "seed": seed}))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError("grid", "run names repeat; give the points distinct names")
    if "lr_search" in spec and "lr_from" in spec:
        raise ConfigError("lr_from", "a sweep either searches its rates (lr_search) or takes them (lr_from)")
    sweep = Sweep(spec.get("name", path.stem), experiment, spec.get("hypothesis", ""), base, runs, path,
                  LRSearch.parse(spec["lr_search"]) if "lr_search" in spec else None, spec.get("lr_from"))
    for r in runs:  # every run's config (and its method) must be valid before anything starts
        cfg = load_config(base, r.overrides)
        method_for(cfg.method, cfg.train)
        check_suites(cfg.eval)  # a suite that cannot run fails here, not at every run's step 0 after the pilots
    return sweep


def _tuned_rates(sweep: Sweep, root: Path) -> dict[str, float]:
    """run name -> learning rate, from this sweep's search (pilots first) or an earlier one (`lr_from`)."""
    if sweep.lr_search is None and sweep.lr_from is None:
        return {}
    choice = run_pilots(sweep, sweep.lr_search, root) if sweep.lr_search is not None else None
    rates = {}
    for r in sweep.runs:
        cfg = load_config(sweep.base, r.overrides)
        label = method_for(cfg.method, cfg.train).label
        rates[r.name] = choice["by_label"][label] if choice else lr_from(sweep.lr_from, label)
    return rates


def run_state(out: Path) -> str:
    if (out / "summary.json").is_file():
        return "finished"
    return "interrupted" if latest_checkpoint(out) is not None else "new"


def run_sweep(path: str | Path, out: str | Path | None = None, gpus: list[str] | None = None,
              dry_run: bool = False) -> dict:
    sweep = load_sweep(path)
    root = Path(out or f"runs/{sweep.name}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.yaml").write_text(sweep.path.read_text())
    plan = []
    for r in sweep.runs:
        state = run_state(root / r.name)
        plan.append((r, state))
        print(f"[sweep] {r.name}: {state}" + (" -> skip" if state == "finished" else ""), flush=True)
    if dry_run:
        return {"runs": {r.name: s for r, s in plan}}
    tuned = _tuned_rates(sweep, root)
    todo = [(SweepRun(r.name, [*r.overrides, f"train.lr={tuned[r.name]!r}"], r.point) if r.name in tuned else r, s)
            for r, s in plan if s != "finished"]
    slots = gpus or [None]
    running: list[tuple[subprocess.Popen, str, SweepRun]] = []
    results: dict[str, int] = {}
    while todo or running:
        free = [g for g in slots if g not in {gpu for _, gpu, _ in running}]
        while todo and free:
            r, state = todo.pop(0)
            gpu = free.pop(0)
            args = [sys.executable, "-m", "convlearn", "train", str(sweep.base), "--out", str(root / r.name)]
            for o in r.overrides:
                args += ["--set", o]
            if state == "interrupted":
                args.append("--resume")
            env = dict(os.environ)
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = str(gpu)
            (root / r.name).mkdir(parents=True, exist_ok=True)
            log = open(root / r.name / "train.log", "a")
            print(f"[sweep] start {r.name}" + (f" on GPU {gpu}" if gpu is not None else ""), flush=True)
            running.append((subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env), gpu, r))
        for item in list(running):
            proc, gpu, r = item
            if proc.poll() is not None:
                running.remove(item)
                results[r.name] = proc.returncode
                print(f"[sweep] {r.name} exited {proc.returncode}", flush=True)
        time.sleep(0.2)
    return {"root": str(root), "runs": {r.name: results.get(r.name, 0) if s != "finished" else "skipped"
                                        for r, s in plan}}
