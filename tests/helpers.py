"""What many tests share: a run config on a tiny twin, the real CLI, a run's metrics, killing a run mid-way."""
from __future__ import annotations

import copy
import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import yaml

# the tiny twins' architectures (conftest builds one of each)
ARCHS = ("qwen2", "llama", "gemma2", "gemma3_text", "phi3")


def run_config(path: Path, model: Path | str, cache: Path, **sections) -> Path:
    """Write a run config for a tiny twin on the chatterbot corpus; `sections` are merged over the defaults
    (`train={"max_steps": 4}` changes one key of the train section)."""
    cfg = {"model": {"name": str(model)},
           "data": {"sources": [{"path": "chatterbot"}], "heldout_fraction": 0.1, "cache_dir": str(cache)},
           "render": {"max_seq_len": 96},
           "method": {"name": "galore", "rank": 8, "update_proj_gap": 5},
           "train": {"max_steps": 6, "batch_size": 4, "lr": 0.003, "save_every": 0},
           "eval": {"schedule": [{"step": 0, "suite": "quick"}], "final_suite": "quick", "heldout_samples": 24},
           "logging": {"progress": False, "tensorboard": False}}
    for name, values in sections.items():
        cfg[name] = _merge(cfg.get(name, {}), values)
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return Path(path)


def _merge(base, over):
    if isinstance(base, dict) and isinstance(over, dict):
        out = copy.deepcopy(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v)
        return out
    return over


def cli(*args, timeout: float | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a fresh interpreter (what a user runs; needed where a run is killed or limited)."""
    return subprocess.run([sys.executable, "-m", "convlearn", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def cli_here(*args) -> SimpleNamespace:
    """The real CLI (parsing, dispatch, exit codes, one-line errors) in this process: the same code without an
    interpreter's start-up (seconds a run). Internal errors propagate as exceptions."""
    from convlearn.cli import main
    out, err = io.StringIO(), io.StringIO()
    umask = os.umask(0o022)  # the live commands set an owner-only umask: it must not outlive the command here
    os.umask(umask)
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:
            rc = e.code
        finally:
            os.umask(umask)
    return SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())


def train(cfg, out, *sets, wait: bool = True, fresh: bool = True):
    """`convlearn train CFG --out OUT`; each of `sets` is `key=value` (an override) or a `--flag`. `fresh`: in a
    new interpreter (what exact-loss comparisons across processes need); else in this one."""
    args = ["train", str(cfg), "--out", str(out)]
    for s in sets:
        args += [s] if s.startswith("--") else ["--set", s]
    if not fresh:
        return cli_here(*args)
    args = [sys.executable, "-m", "convlearn", *args]
    if not wait:
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(args, capture_output=True, text=True)


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def kill_after_steps(proc: subprocess.Popen, out: Path, steps: int, timeout: float = 120) -> int:
    """SIGKILL a running `convlearn train` once its metrics.jsonl holds `steps` lines; returns the lines it
    held when killed. Fails if the run ended by itself first."""
    path = Path(out) / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= steps:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(path.read_text().splitlines())


def free_port() -> int:
    """A TCP port free on loopback now (for a server a test starts)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
