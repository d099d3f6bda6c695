"""Run telemetry: metrics.jsonl (one object per optimizer step), TensorBoard, Weights & Biases, memory figures."""
from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import UserError

if TYPE_CHECKING:
    from ..config import RunConfig


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class Telemetry:
    def __init__(self, out: Path, cfg: RunConfig, enabled: bool = True, resume_step: int | None = None):
        self.out = Path(out)
        self.enabled = enabled
        self.tb = self.wandb = None
        if not enabled:
            return
        self.metrics_path = self.out / "metrics.jsonl"
        if resume_step is not None:
            self._truncate(resume_step)
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # 2.3 s to import: only when enabled
            self.tb = SummaryWriter(str(self.out / "tb"), purge_step=resume_step)
        if cfg.logging.wandb:
            try:
                import wandb  # optional extra
            except ImportError:
                raise UserError("logging.wandb needs the wandb package: pip install 'convlearn[wandb]'") from None
            self.wandb = wandb.init(project=cfg.logging.wandb_project, mode=cfg.logging.wandb_mode,
                                    dir=str(self.out), name=self.out.name, resume="allow",
                                    config=json.loads(json.dumps(_plain(cfg), default=str)))

    def _truncate(self, step: int) -> None:
        """On resume, drop the lines of steps after the checkpoint: they are about to be run again. A last line cut
        short by a kill mid-write is dropped too (it can only belong to a step after the checkpoint)."""
        if not self.metrics_path.exists():
            return
        keep = []
        for line in self.metrics_path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", step + 1) <= step:
                keep.append(line)
        tmp = self.metrics_path.with_name(self.metrics_path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.metrics_path)

    def cut_to(self, step: int) -> None:
        """Forget the steps after `step` (they are run again after a roll-back)."""
        if self.enabled:
            self._truncate(step)

    def log_step(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        self._scalars("train", record)

    def log_eval(self, step: int, figures: dict) -> None:
        if self.enabled:
            self._scalars("eval", {"step": step, **figures})

    def _scalars(self, prefix: str, record: dict) -> None:
        step = record["step"]
        scalars = {f"{prefix}/{k}": v for k, v in _flatten(record).items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(v)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _plain(cfg: RunConfig):
    return asdict(cfg)


class ActivationMeter:
    """Bytes of the tensors a forward pass keeps for backward (autograd's saved tensors, each storage once),
    weights excluded: the activation memory of a step, measured where no allocator counter exists (CPU). The
    bf16 copies autocast makes of fp32 weights are not weights: they are counted."""

    def __init__(self, params):
        self.weights = {p.untyped_storage().data_ptr() for p in params}
        self.peak = 0

    @contextmanager
    def measure(self):
        seen: dict[int, int] = {}

        def pack(t):
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in self.weights:
                seen[ptr] = storage.nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield
        self.peak = max(self.peak, sum(seen.values()))

    def take_peak(self) -> int:
        peak, self.peak = self.peak, 0
        return peak


class RssPeak:
    """The process's peak resident set (Linux VmHWM) since the last reset: what training really holds on a CPU,
    weights, state, activations, allocator slack, libraries and all (None where /proc is not Linux's). Reset
    around each evaluation like `CudaPeak`, by writing 5 to /proc/self/clear_refs (the kernel's peak-RSS reset)."""

    def read(self) -> int | None:
        try:
            with open("/proc/self/status") as f:
                line = next((x for x in f if x.startswith("VmHWM:")), None)
        except OSError:
            return None
        return int(line.split()[1]) * 1024 if line else None

    def reset(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


class CudaPeak:
    """The CUDA allocator's peak since the last reset (None without CUDA). The loop resets it around each
    evaluation: step records then carry training's peak alone, and the evaluation's is recorded apart (its
    step-0 pass would otherwise set every method's peak)."""

    def read(self) -> int | None:
        return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None

    def reset(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
