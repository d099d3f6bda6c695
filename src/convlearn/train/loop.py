"""The training loop every method runs through: same data order, same figures, exact resume.

The Trainer is given its parts (train/build.py makes them from a run config): a `Trainable` (model + method +
optimizer), the batch stream (replay inside), a checkpointer, telemetry, and optionally an evaluator. It reads
only the `train` section. It knows nothing of evaluation beyond asking the evaluator whether a step is due.
"""
from __future__ import annotations

import json
import math
import re
import sys
import time
import warnings
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from tqdm import tqdm

from ..precision import Precision
from .batches import BatchStream, token_losses
from .checkpoint import MODEL_DIR, Checkpointer, load_trainer_state, set_rng_state
from .distributed import Dist
from .galore import state_bytes
from .methods import Trainable
from .summary import RunSummary
from .telemetry import ActivationMeter, CudaPeak, RssPeak, Telemetry, tensor_bytes

if TYPE_CHECKING:
    from ..config import TrainConfig


class Evaluator(Protocol):
    """What the loop needs of evaluation: whether a step is due, and running it on the live model."""

    def due(self, step: int, last: bool) -> bool: ...

    def run(self, step: int, model: torch.nn.Module) -> dict: ...


class RunStopped(Exception):
    """Training had to stop (too many non-finite steps); a checkpoint of the last good state was written."""


def weights_finite(params: list[torch.Tensor]) -> bool:
    """All weights finite, in one reduction and one host sync (a norm per tensor, as gradient clipping does)."""
    norms = torch._foreach_norm([p.detach() for p in params])
    return bool(torch.isfinite(torch.stack(norms)).all()) if norms else True


def lr_factor(step: int, t) -> float:
    """Warm-up (linear from 1/warmup), then constant, cosine or linear decay to min_lr_ratio."""
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return 1.0
    span = max(1, t.max_steps - t.warmup_steps)
    progress = min(1.0, (step - t.warmup_steps) / span)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if t.schedule == "cosine" else 1 - progress
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * shape


class Trainer:
    def __init__(self, train_cfg: TrainConfig, trainable: Trainable, stream: BatchStream, *, out: Path,
                 checkpointer: Checkpointer, telemetry: Telemetry, dist: Dist, device: str, precision: Precision,
                 evaluator: Evaluator | None = None, max_steps: int | None = None, resume: dict | None = None,
                 resume_from: Path | None = None, progress: bool = True):
        self.t, self.trainable, self.stream = train_cfg, trainable, stream
        self.out, self.checkpointer, self.telemetry, self.evaluator = Path(out), checkpointer, telemetry, evaluator
        self.dist, self.device, self.precision, self.progress = dist, device, precision, progress
        self.max_steps = max_steps or train_cfg.max_steps
        self.model = dist.wrap(trainable.model, device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(trainable.optimizer, lambda s: lr_factor(s, train_cfg))
        self.state = {"step": 0, "tokens": 0, "loss_tokens": 0, "skipped_steps": 0, "bad_in_row": 0}
        if resume is not None:
            trainable.optimizer.load_state_dict(resume["optimizer"])
            self.scheduler.load_state_dict(resume["scheduler"])
            stream.load_state(resume["stream"])
            self.state.update(resume["counters"])
            set_rng_state(resume["rng"])
        self.last_saved = self.state["step"] if resume is not None else -1
        self.last_checkpoint, self.rolled_back = resume_from, False
        # activation memory: the allocator's peak on a GPU; measured from autograd's saved tensors on CPU
        self.activations = ActivationMeter(trainable.model.parameters()) if not device.startswith("cuda") else None
        self.peak, self.eval_peak_bytes = CudaPeak(), None
        self.rss = RssPeak() if not device.startswith("cuda") else None  # the measured peak on a CPU
        # Where this process's wall time goes (summary.json "time"): batches, forward/backward/step, evals,
        # checkpoints; the rest is logging and bookkeeping.
        self.timing = {"data": 0.0, "compute": 0.0, "eval": 0.0, "checkpoint": 0.0}

    # -- one optimizer step ------------------------------------------------------------------------------
    def _step(self) -> dict:
        t, tr = self.t, self.trainable
        lw, opt = tr.layerwise, tr.optimizer
        started = time.perf_counter()
        micro = [self.stream.next() for _ in range(t.grad_accum) if not self.stream.done]
        fetched = time.perf_counter()
        local_tokens = sum(int(b["loss_mask"][:, 1:].sum()) for b in micro)
        global_tokens = self.dist.sum(local_tokens)
        input_tokens = self.dist.sum(sum(int(b["attention_mask"].sum()) for b in micro))
        if lw is not None:
            lw.begin_step(t.grad_accum)
        loss_sum, finite = 0.0, True
        for i, batch in enumerate(micro):
            if lw is not None:
                lw.begin_micro(i)
            with self.dist.no_sync(self.model, last=i == len(micro) - 1):
                with self.activations.measure() if self.activations is not None else nullcontext():
                    s, _ = token_losses(self.model, batch, self.precision.autocast(), t.loss_chunk_tokens)
                if not torch.isfinite(s):
                    finite = False
                    break
                if global_tokens > 0:
                    (s * self.dist.world / global_tokens).backward()
            loss_sum += float(s.detach())
        loss_sum = self.dist.sum(loss_sum)
        grads = [p.grad for p in tr.trainable]
        grad_bytes = lw.grad_bytes_peak if lw is not None else tensor_bytes(grads)
        grad_norm = None
        updated = False
        if lw is not None:
            if finite and global_tokens > 0:
                grad_norm, finite = lw.finish_step()
                updated = finite
            else:
                lw.discard_step()
        elif finite and global_tokens > 0:
            norm = torch.nn.utils.clip_grad_norm_(tr.trainable, t.max_grad_norm or float("inf"))
            grad_norm = float(norm)
            finite = math.isfinite(grad_norm)
            if finite:
                opt.step()
                updated = True
        opt.zero_grad(set_to_none=True)
        if updated and not weights_finite(tr.trainable):
            return self._roll_back()
        lr = opt.param_groups[0]["lr"]
        with warnings.catch_warnings():  # layer-wise and skipped steps update without optimizer.step()
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            self.scheduler.step()
        st = self.state
        st["step"] += 1
        st["tokens"] += int(input_tokens)
        st["loss_tokens"] += int(global_tokens)
        if finite:
            st["bad_in_row"] = 0
        else:
            st["skipped_steps"] += 1
            st["bad_in_row"] += 1
        elapsed = time.perf_counter() - started
        self.timing["data"] += fetched - started
        self.timing["compute"] += elapsed - (fetched - started)
        loss = loss_sum / global_tokens if global_tokens and finite else float("nan")
        record = {"step": st["step"], "loss": loss, "lr": lr, "grad_norm": grad_norm,
                  "tokens": st["tokens"], "loss_tokens": st["loss_tokens"],
                  "tokens_per_s": input_tokens / elapsed, "step_seconds": elapsed,
                  "step_input_tokens": int(input_tokens),
                  "data_seconds": fetched - started,
                  "skipped_steps": st["skipped_steps"],
                  "memory": {"model_param_bytes": tensor_bytes(tr.model.parameters()),
                             "trainable_param_bytes": tensor_bytes(tr.trainable),
                             "grad_bytes_peak": grad_bytes, "optimizer_state_bytes": state_bytes(opt),
                             "activation_bytes_peak": self.activations.take_peak() if self.activations else None,
                             "cuda_peak_bytes": self.peak.read(),
                             "rss_peak_bytes": self.rss.read() if self.rss else None}}
        domains = [d for b in micro for d in b["domains"]]
        record["data"] = {"epoch": self.stream.epoch, "pos": self.stream.pos,
                          "domain": Counter(domains).most_common(1)[0][0] if domains else None}
        if hasattr(opt, "stats"):
            record["galore"] = dict(opt.stats)
        if self.stream.replay is not None:
            kinds = [k for b in micro for k in b["kinds"]]
            record["replay"] = {"batch_replayed": sum(k != "new" for k in kinds) / len(kinds),
                                "realised_ratio": self.stream.replay.realised_ratio,
                                **self.stream.replay.counts}
        return record

    def _roll_back(self) -> dict:
        """The update made weights non-finite (finite loss and gradients, a rate too large): such weights are
        never saved. Go back to the last checkpoint and go on; if it happens again before a new checkpoint, or
        there is none yet, stop with one line."""
        step = self.state["step"] + 1
        ckpt = self.last_checkpoint
        if ckpt is None or self.rolled_back:
            where = f"again after rolling back to {ckpt.name}" if ckpt is not None else "before any checkpoint"
            raise RunStopped(f"stopped at step {step}: an update made the weights non-finite {where}; nothing "
                             f"non-finite was saved. Lower train.lr (or train.max_grad_norm) and resume.")
        ts = load_trainer_state(ckpt)
        restored = self.state.get("rolled_back", 0) + 1
        self.trainable.method.reload(self.trainable, ckpt / MODEL_DIR)
        self.trainable.optimizer.load_state_dict(ts["optimizer"])
        self.scheduler.load_state_dict(ts["scheduler"])
        self.stream.load_state(ts["stream"])
        self.state.update(ts["counters"])
        self.state["rolled_back"] = restored
        set_rng_state(ts["rng"])
        self.telemetry.cut_to(self.state["step"])
        self.rolled_back = True
        print(f"convlearn: step {step}: an update made the weights non-finite; rolled back to {ckpt.name} "
              f"({restored} roll-back(s) in this run)", file=sys.stderr, flush=True)
        return {}

    def _save(self) -> None:
        started = time.perf_counter()
        if self.dist.main:
            self.last_checkpoint = self.checkpointer.save(self.state["step"], self.trainable, {
                "scheduler": self.scheduler.state_dict(), "stream": self.stream.state(),
                "counters": dict(self.state)})
        self.last_saved = self.state["step"]
        self.rolled_back = False
        self.dist.barrier()
        self.timing["checkpoint"] += time.perf_counter() - started

    def _eval(self, last: bool = False) -> None:
        started = time.perf_counter()
        step = self.state["step"]
        if self.evaluator is not None and self.evaluator.due(step, last):
            self.model.eval()
            self.peak.reset()  # the evaluation's own peak (the last step's record has read training's)
            if self.rss:
                self.rss.reset()
            # under the run's precision, as `convlearn eval` scores a saved checkpoint (bf16 compute in bf16-mixed)
            with torch.no_grad(), self.precision.autocast():
                figures = self.evaluator.run(step, self.trainable.model)
            self.model.train()
            peak = self.peak.read()
            if peak is None and self.rss:  # on a CPU the evaluation's peak is the process's resident set
                peak = self.rss.read()
            if peak is not None:
                self.eval_peak_bytes = max(self.eval_peak_bytes or 0, peak)
            self.peak.reset()  # training's peak counts from here, without this evaluation
            if self.rss:
                self.rss.reset()
            self.telemetry.log_eval(step, {**figures, "eval_peak_bytes": peak})
        self.dist.barrier()
        self.timing["eval"] += time.perf_counter() - started

    # -- the run ---------------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        t = self.t
        run_started = time.perf_counter()
        self.model.train()
        if self.state["step"] == 0:
            self._eval()
        bar = tqdm(total=self.max_steps, initial=self.state["step"], unit="step", dynamic_ncols=True, mininterval=1.0,
                   disable=not (self.dist.main and self.progress))
        records = []
        try:
            while self.state["step"] < self.max_steps and not self.stream.done:
                record = self._step()
                if not record:  # rolled back to the last checkpoint: its steps are run again
                    records = [r for r in records if r["step"] <= self.state["step"]]
                    bar.n = self.state["step"]
                    continue
                records.append(record)
                self.telemetry.log_step(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}")
                step = self.state["step"]
                if self.state["bad_in_row"] >= t.max_bad_steps:
                    self._save()
                    raise RunStopped(f"stopped at step {step}: {self.state['bad_in_row']} non-finite steps in a "
                                     f"row (train.max_bad_steps={t.max_bad_steps}); the last good state is in "
                                     f"{self.out / 'checkpoints'}. Lower train.lr or check the data.")
                if t.save_every and step % t.save_every == 0 and step < self.max_steps:
                    self._save()
                if step < self.max_steps and not self.stream.done:
                    self._eval()
            if self.last_saved != self.state["step"]:
                self._save()
            self._eval(last=True)
        finally:
            bar.close()
            self.telemetry.close()
        wall = time.perf_counter() - run_started
        timing = {f"{k}_s": round(v, 3) for k, v in self.timing.items()}
        timing.update(wall_s=round(wall, 3), other_s=round(wall - sum(self.timing.values()), 3),
                      outside_compute_share=round(1 - self.timing["compute"] / wall, 4) if wall else None)
        return self._summary(records, timing)

    def _summary(self, records: list[dict], timing: dict) -> RunSummary:
        good = [r for r in records if math.isfinite(r["loss"])]
        tr = self.trainable
        # Throughput as a user lives it: every token this process trained on over the wall time it took, projector
        # refreshes, batching and checkpoints included, scheduled evaluation left out (and reported apart). The
        # mean of per-step rates would hide the rare slow refresh steps.
        run_tokens = sum(r["step_input_tokens"] for r in records)
        train_seconds = timing["wall_s"] - timing["eval_s"]
        summary = RunSummary(
            method=tr.name, method_label=tr.method.label, steps=self.state["step"],
            tokens=self.state["tokens"], loss_tokens=self.state["loss_tokens"],
            skipped_steps=self.state["skipped_steps"],
            final_loss=good[-1]["loss"] if good else None,
            tokens_per_s=run_tokens / train_seconds if records and train_seconds > 0 else None,
            throughput={"tokens": run_tokens, "train_seconds": round(train_seconds, 3),
                        "eval_seconds": timing["eval_s"], "steps": len(records),
                        "step_seconds": [round(r["step_seconds"], 4) for r in records],
                        "step_tokens": [r["step_input_tokens"] for r in records]},
            mean_step_tokens_per_s=(sum(r["tokens_per_s"] for r in records) / len(records)) if records else None,
            peak_memory={k: max((r["memory"][k] or 0) for r in records) for k in records[0]["memory"]}
            if records else {},
            eval_peak_bytes=self.eval_peak_bytes, world_size=self.dist.world, precision=self.precision.mode,
            time=timing,
            galore=records[-1]["galore"] if records and "galore" in records[-1] else None)
        if self.dist.main:
            (self.out / "summary.json").write_text(json.dumps(summary.to_json(), indent=2))
        return summary
