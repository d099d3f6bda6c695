"""Turns a run config into the Trainer's parts, in one place: the run directory, the data, the model and its
method, the batch stream with replay, the checkpointer, telemetry. `convlearn train` and the online learner
both build their training through here; the loop itself reads only the `train` section.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig, dump_config
from ..data.prepare import PreparedData, prepare
from ..data.splits import replay_data_config
from ..errors import UserError
from ..models import ModelSpec, load_from_config, load_tokenizer, model_spec, resolve_device
from ..precision import Precision, resolve_precision
from .batches import BatchStream
from .checkpoint import MODEL_DIR, Checkpointer, latest_checkpoint, load_trainer_state, usable_checkpoint
from .distributed import Dist
from .loop import Evaluator, Trainer
from .methods import Method, Trainable, method_for
from .model_folder import keep_base
from .replay import ReplayMixer
from .telemetry import Telemetry


@dataclass
class RunSetup:
    """What a run has before its model is built: where it writes, on what, with which data."""
    cfg: object
    out: Path
    dist: Dist
    device: str          # "cpu" or "cuda:<local rank>"
    precision: Precision  # resolved once from train.precision on `device`; every part of the run follows it
    method: Method
    tokenizer: object
    spec: ModelSpec
    prepared: PreparedData
    checkpoint: Path | None  # the checkpoint to resume from


def set_up_run(cfg: RunConfig, out: Path, resume: bool = False) -> RunSetup:
    """Check the run can start, write its resolved config, load the tokenizer and prepare (or find) the data."""
    out = Path(out)
    method = method_for(cfg.method, cfg.train)  # unknown method or unsupported option: exit 2 before any work
    device = resolve_device(cfg.model.device)
    dist = Dist.from_env(device)
    if dist.world > 1 and cfg.method.layerwise:
        raise UserError("method.layerwise: not supported under DDP (each rank would update its weights in "
                        "a backward hook before gradients are averaged); run it on one process")
    if not resume and latest_checkpoint(out) is not None:
        raise UserError(f"{out} already holds checkpoints: pass --resume, or choose another --out")
    checkpoint = usable_checkpoint(out) if resume else None
    if resume and checkpoint is None and latest_checkpoint(out) is not None:
        raise UserError(f"{out}: every checkpoint is damaged (see above); nothing intact to resume from")
    torch.manual_seed(cfg.seed)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(cfg))
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    spec = model_spec(cfg.model.name, cfg.model.revision)
    if not dist.main:
        dist.barrier()  # rank 0 prepares (or finds the cache) first
    prepared = prepare(cfg, tokenizer, spec, progress=dist.main and cfg.logging.progress)
    if dist.main:
        dist.barrier()
    device = f"cuda:{dist.local_rank}" if device == "cuda" else device
    prec = resolve_precision(cfg.train.precision, device)
    if cfg.model.dtype != "auto" and cfg.model.dtype != prec.weight_dtype_name and dist.main:
        print(f"convlearn: note: model.dtype={cfg.model.dtype} is not used: train.precision={prec.mode} holds "
              f"the weights in {prec.weight_dtype_name}", file=sys.stderr)
    return RunSetup(cfg, out, dist, device, prec, method, tokenizer, spec, prepared, checkpoint)


def build_trainable(setup: RunSetup) -> Trainable:
    """The model (from the checkpoint when resuming) wrapped and optimised as the method says."""
    cfg, method = setup.cfg, setup.method
    ckpt_model = setup.checkpoint / MODEL_DIR if setup.checkpoint is not None else None
    weights = method.initial_weights(cfg.model.name, ckpt_model)
    model = load_from_config(cfg.model, weights=None if weights == cfg.model.name else weights,
                             precision=setup.precision)
    if cfg.train.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    targets = cfg.method.target_modules or list(setup.spec.facts.target_modules)
    trainable = method.build(model, cfg.train, targets, setup.device.split(":")[0], seed=cfg.seed)
    setup.precision.hold_frozen(trainable.model)
    if ckpt_model is not None:
        method.restore(trainable, ckpt_model)
    return trainable


def build_stream(setup: RunSetup) -> BatchStream:
    """The seeded batch stream of the prepared training samples, with the replay mixer when replay is on."""
    cfg, tok = setup.cfg, setup.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    mask = "token_mask" if cfg.render.loss == "all" else "assistant_mask"
    train = setup.prepared.dataset("train")
    if len(train) == 0:
        d = setup.prepared.meta["data"]
        skipped = ", ".join(f"{k} {v}" for k, v in d["skipped"].items()) or "none"
        raise UserError(f"no training samples: data.sources ({', '.join(s.path for s in cfg.data.sources)}) gave "
                        f"{d['rows']} rows, {d['conversations'] + d['documents']} kept ({d['heldout']} held out); "
                        f"skipped: {skipped}")
    mixer, original = build_replay(setup)
    return BatchStream(train, cfg.train.batch_size, seed=cfg.seed, order=cfg.train.order,
                       mask=mask, pad_id=pad, rank=setup.dist.rank, world=setup.dist.world, replay=mixer,
                       original=original, single_pass=cfg.train.single_pass)


def build_replay(setup: RunSetup):
    """The replay mixer and the tokenized original-distribution samples it draws from (or None, None)."""
    cfg = setup.cfg
    r = cfg.replay
    if r.ratio <= 0:
        return None, None
    original = None
    if r.source in ("original", "both"):
        replay_cfg = dataclasses.replace(cfg, data=replay_data_config(cfg))
        original = prepare(replay_cfg, setup.tokenizer, setup.spec,
                           progress=setup.dist.main and cfg.logging.progress).dataset("train")
        if len(original) == 0:
            raise UserError("replay.original: no documents to replay")
    mixer = ReplayMixer(r.ratio, cfg.seed, original_size=len(original) if original is not None else 0,
                        reservoir_size=r.reservoir_size, source=r.source, original_share=r.original_share)
    return mixer, original


def build_trainer(setup: RunSetup, evaluator: Evaluator | None = None, max_steps: int | None = None
                  ) -> Trainer:
    cfg = setup.cfg
    trainable = build_trainable(setup)
    stream = build_stream(setup)
    resume = load_trainer_state(setup.checkpoint) if setup.checkpoint is not None else None
    telemetry = Telemetry(setup.out, cfg, enabled=setup.dist.main,
                          resume_step=resume["counters"]["step"] if resume is not None else None)
    base = keep_base(setup.out, cfg.model.name) if setup.method.adapter and setup.dist.main else None
    checkpointer = Checkpointer(setup.out, cfg.train.keep_last, setup.tokenizer, setup.spec, base)
    return Trainer(cfg.train, trainable, stream, out=setup.out, checkpointer=checkpointer, telemetry=telemetry,
                   dist=setup.dist, device=setup.device,
                   precision=setup.precision, evaluator=evaluator if setup.dist.main else None,
                   max_steps=max_steps, resume=resume, resume_from=setup.checkpoint, progress=cfg.logging.progress)
