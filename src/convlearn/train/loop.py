"""The training loop every method runs through: same data order, same figures, exact resume."""
from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from ..config import dump_config
from ..errors import UserError
from ..models import load_model, load_tokenizer, model_spec, resolve_device
from .batches import BatchStream, token_losses
from .checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint, set_rng_state
from .distributed import Dist
from .galore import state_bytes
from .methods import Method, build_method
from .replay import ORIGINAL_HELDOUT, replay_shares_eval_source
from .telemetry import Telemetry, cuda_peak_bytes, tensor_bytes

# An evaluator is called as evaluator(model, step) -> scalars at the steps in evaluator.schedule ({step: suite}).
Evaluator = Callable[[torch.nn.Module, int], dict]


class RunStopped(Exception):
    """Training had to stop (too many non-finite steps); a checkpoint of the last good state was written."""


def precision_of(cfg, device: str) -> str:
    p = cfg.train.precision
    return ("bf16" if device.startswith("cuda") else "fp32") if p == "auto" else p


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


def _load_lora_adapter(method: Method, path: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    set_peft_model_state_dict(method.model, load_file(str(path / "adapter_model.safetensors")))


class Trainer:
    def __init__(self, cfg, out: Path, *, max_steps: int | None = None, resume: bool = False,
                 evaluator_factory: Callable[..., Evaluator] | None = None):
        from ..data.prepare import prepare
        self.cfg, self.out = cfg, Path(out)
        self.max_steps = max_steps or cfg.train.max_steps
        device = resolve_device(cfg.model.device)
        self.dist = Dist.from_env(device)
        self.device = f"cuda:{self.dist.local_rank}" if device == "cuda" else device
        self.precision = precision_of(cfg, device)
        if self.dist.world > 1 and cfg.method.layerwise:
            raise UserError("method.layerwise: not supported under DDP (each rank would update its weights in "
                            "a backward hook before gradients are averaged); run it on one process")
        self.ckpt = latest_checkpoint(self.out) if resume else None
        if not resume and latest_checkpoint(self.out) is not None:
            raise UserError(f"{self.out} already holds checkpoints: pass --resume, or choose another --out")
        torch.manual_seed(cfg.seed)
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(dump_config(cfg))

        self.tokenizer = load_tokenizer(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
        self.spec = model_spec(cfg.model.name, cfg.model.revision)
        if not self.dist.main:
            self.dist.barrier()  # rank 0 prepares (or finds the cache) first
        self.prepared = prepare(cfg, self.tokenizer, self.spec, progress=self.dist.main and cfg.logging.progress)
        if self.dist.main:
            self.dist.barrier()

        dtype = "bfloat16" if self.precision == "bf16" else "float32"
        weights = str(self.ckpt / "model") if self.ckpt and cfg.method.name != "lora" else cfg.model.name
        model = load_model(weights, revision=None if self.ckpt else cfg.model.revision, dtype=dtype,
                           device=device, attn_implementation=cfg.model.attn_implementation,
                           trust_remote_code=cfg.model.trust_remote_code).to(self.device)
        if cfg.train.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        self.method = build_method(model, cfg, self.spec, device, seed=cfg.seed)
        if self.ckpt and cfg.method.name == "lora":
            _load_lora_adapter(self.method, self.ckpt / "model")
        self.model = self.dist.wrap(self.method.model, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.method.optimizer,
                                                           lambda s: lr_factor(s, cfg.train))
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        mask = "token_mask" if cfg.render.loss == "all" else "assistant_mask"
        mixer, original = self._replay(prepare)
        self.stream = BatchStream(self.prepared.dataset("train"), cfg.train.batch_size, seed=cfg.seed,
                                  order=cfg.train.order, mask=mask, pad_id=pad, rank=self.dist.rank,
                                  world=self.dist.world, replay=mixer, original=original,
                                  single_pass=cfg.train.single_pass)
        self.state = {"step": 0, "tokens": 0, "loss_tokens": 0, "skipped_steps": 0, "bad_in_row": 0}
        if self.ckpt:
            ts = load_trainer_state(self.ckpt)
            self.method.optimizer.load_state_dict(ts["optimizer"])
            self.scheduler.load_state_dict(ts["scheduler"])
            self.stream.load_state(ts["stream"])
            self.state.update(ts["counters"])
            set_rng_state(ts["rng"])
        self.telemetry = Telemetry(self.out, cfg, enabled=self.dist.main,
                                   resume_step=self.state["step"] if self.ckpt else None)
        self.evaluate = evaluator_factory(self) if evaluator_factory and self.dist.main else None
        self.autocast = torch.autocast(device, dtype=torch.bfloat16) if self.precision == "bf16-mixed" else None
        self.last_saved = self.state["step"] if self.ckpt else -1
        # Where this process's wall time goes (summary.json "time"): batches, forward/backward/step, evals,
        # checkpoints; the rest is logging and bookkeeping.
        self.timing = {"data": 0.0, "compute": 0.0, "eval": 0.0, "checkpoint": 0.0}

    def _replay(self, prepare):
        """The replay mixer and the tokenized original-distribution samples it draws from (or None, None)."""
        r = self.cfg.replay
        if r.ratio <= 0:
            return None, None
        original = None
        if r.source in ("original", "both"):
            import dataclasses
            shared = replay_shares_eval_source(self.cfg)
            data = dataclasses.replace(self.cfg.data, sources=[r.original], max_conversations=None,
                                       heldout_fraction=ORIGINAL_HELDOUT if shared else 0.0)
            original = prepare(dataclasses.replace(self.cfg, data=data), self.tokenizer, self.spec,
                               progress=self.dist.main and self.cfg.logging.progress).dataset("train")
            if len(original) == 0:
                raise UserError("replay.original: no documents to replay")
        from .replay import ReplayMixer
        mixer = ReplayMixer(r.ratio, self.cfg.seed, original_size=len(original) if original is not None else 0,
                            reservoir_size=r.reservoir_size, source=r.source, original_share=r.original_share)
        return mixer, original

    # -- one optimizer step ------------------------------------------------------------------------------
    def _step(self) -> dict:
        t, lw, opt = self.cfg.train, self.method.layerwise, self.method.optimizer
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
                s, _ = token_losses(self.model, batch, self.autocast, t.loss_chunk_tokens)
                if not torch.isfinite(s):
                    finite = False
                    break
                if global_tokens > 0:
                    (s * self.dist.world / global_tokens).backward()
            loss_sum += float(s.detach())
        loss_sum = self.dist.sum(loss_sum)
        grads = [p.grad for p in self.method.trainable]
        grad_bytes = lw.grad_bytes_peak if lw is not None else tensor_bytes(grads)
        grad_norm = None
        if finite and global_tokens > 0:
            if lw is not None:
                grad_norm = lw.grad_norm
                finite = lw.nonfinite == 0
            else:
                norm = torch.nn.utils.clip_grad_norm_(self.method.trainable, t.max_grad_norm or float("inf"))
                grad_norm = float(norm)
                finite = math.isfinite(grad_norm)
                if finite:
                    opt.step()
        if lw is not None:
            lw.low.clear()
        opt.zero_grad(set_to_none=True)
        lr = opt.param_groups[0]["lr"]
        with warnings.catch_warnings():  # layer-wise and skipped steps update without optimizer.step()
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
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
                  "data_seconds": fetched - started,
                  "skipped_steps": st["skipped_steps"],
                  "memory": {"model_param_bytes": tensor_bytes(self.method.model.parameters()),
                             "trainable_param_bytes": tensor_bytes(self.method.trainable),
                             "grad_bytes_peak": grad_bytes, "optimizer_state_bytes": state_bytes(opt),
                             "cuda_peak_bytes": cuda_peak_bytes()}}
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

    def _save(self) -> None:
        started = time.perf_counter()
        if self.dist.main:
            save_checkpoint(self.out, self.state["step"], self.method, {
                "scheduler": self.scheduler.state_dict(), "stream": self.stream.state(),
                "counters": dict(self.state)}, self.cfg.train.keep_last)
        self.last_saved = self.state["step"]
        self.dist.barrier()
        self.timing["checkpoint"] += time.perf_counter() - started

    def _eval_due(self) -> bool:
        return self.evaluate is not None and self.state["step"] in self.evaluate.schedule

    def _eval(self) -> None:
        started = time.perf_counter()
        if self._eval_due():
            self.model.eval()
            with torch.no_grad():
                figures = self.evaluate(self.method.model, self.state["step"])
            self.model.train()
            self.telemetry.log_eval(self.state["step"], figures)
        self.dist.barrier()
        self.timing["eval"] += time.perf_counter() - started

    # -- the run ---------------------------------------------------------------------------------------
    def run(self) -> dict:
        from tqdm import tqdm
        t = self.cfg.train
        run_started = time.perf_counter()
        self.model.train()
        if self.state["step"] == 0:
            self._eval()
        bar = tqdm(total=self.max_steps, initial=self.state["step"], unit="step", dynamic_ncols=True, mininterval=1.0,
                   disable=not (self.dist.main and self.cfg.logging.progress))
        records = []
        try:
            while self.state["step"] < self.max_steps and not self.stream.done:
                record = self._step()
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
            if self.evaluate is not None and self.state["step"] not in self.evaluate.schedule \
                    and self.cfg.eval.final_suite is not None:  # a single pass ended before max_steps
                self.evaluate.schedule[self.state["step"]] = self.cfg.eval.final_suite
            self._eval()
        finally:
            bar.close()
            self.telemetry.close()
        wall = time.perf_counter() - run_started
        timing = {f"{k}_s": round(v, 3) for k, v in self.timing.items()}
        timing.update(wall_s=round(wall, 3), other_s=round(wall - sum(self.timing.values()), 3),
                      outside_compute_share=round(1 - self.timing["compute"] / wall, 4) if wall else None)
        return self._summary(records, timing)

    def _summary(self, records: list[dict], timing: dict) -> dict:
        good = [r for r in records if math.isfinite(r["loss"])]
        summary = {
            "method": self.method.name, "steps": self.state["step"], "tokens": self.state["tokens"],
            "loss_tokens": self.state["loss_tokens"], "skipped_steps": self.state["skipped_steps"],
            "final_loss": good[-1]["loss"] if good else None,
            "mean_tokens_per_s": (sum(r["tokens_per_s"] for r in records) / len(records)) if records else None,
            "peak_memory": {k: max((r["memory"][k] or 0) for r in records) for k in records[0]["memory"]}
            if records else {},
            "world_size": self.dist.world, "precision": self.precision, "time": timing,
            **({"galore": records[-1]["galore"]} if records and "galore" in records[-1] else {}),
        }
        if self.dist.main:
            import json
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
            if self.method.name == "lora" and self.cfg.method.save_merged:
                self.method.model.merge_and_unload().save_pretrained(self.out / "merged")
                self.tokenizer.save_pretrained(self.out / "merged")
        return summary
