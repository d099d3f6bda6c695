"""Config sections of training: the method, the loop, replay."""
from __future__ import annotations

from typing import Literal, Optional

from ..errors import ConfigError
from .data import SourceConfig
from .schema import opt, section


@section
class MethodConfig:
    # A string, not a Literal: the methods are the modules of convlearn/train/methods/ (one file each), which
    # check the name and their own keys when a run is built; docs/CONFIG.md lists them under "Methods".
    name: str = opt("galore", "The training method: adamw (full fine-tuning, the baseline), lora (peft), galore, "
                              "galore8bit, apollo, apollo_mini; see the Methods table below.")
    target_modules: list[str] = opt([], "Linear modules LoRA adapts and GaLore projects; empty = the model "
                                        "family's attention and MLP projections (registry).")
    lora_rank: int = opt(64, "LoRA rank r.", ge=1)
    lora_alpha: float = opt(128.0, "LoRA alpha (scale = alpha / r).", gt=0)
    lora_dropout: float = opt(0.05, "Dropout on the LoRA input.", ge=0.0, lt=1.0)
    save_merged: bool = opt(False, "LoRA: also save the merged full model at the end (`merged/`).")
    rank: int = opt(128, "GaLore / APOLLO projection rank (the seed uses 256 and 128).", ge=1)
    update_proj_gap: int = opt(200, "Optimizer steps between projector refreshes.", ge=1)
    scale: float = opt(0.25, "GaLore scale applied to the projected-back update.", gt=0)
    proj_type: Literal["std", "reverse_std", "left", "right"] = opt(
        "std", "Which side GaLore projects (std: the smaller side of each matrix, as the reference).")
    refresh: Literal["svd", "randomized", "warm", "random"] = opt(
        "warm", "How a projector is refreshed. warm (the default) = randomized SVD started from the previous "
                "projector (one power iteration): it captures >= 99.5% of what a full SVD captures of a "
                "drifted gradient (tests/train/test_galore.py) at a fraction of the cost (all projectors of "
                "Qwen2.5-1.5B on an H200: 1.0 s vs 16.2 s for full SVDs, which would cost 81 ms a step at gap "
                "200); the first refresh of a weight is a plain randomized SVD. svd = full SVD of the gradient "
                "(GaLore's reference); randomized = randomized low-rank SVD; random = a random orthonormal "
                "projection (no SVD).")
    randomized_oversample: int = opt(8, "randomized / warm: extra columns beyond the rank.", ge=0)
    randomized_iters: Optional[int] = opt(None, "randomized / warm: power iterations; null = 2 for randomized, 1 "
                                                "for warm.", ge=0)
    layerwise: bool = opt(False, "galore, adamw: handle each weight's gradient in its own backward hook and free "
                                 "it at once, so full gradients never all coexist (adamw: torch AdamW per "
                                 "parameter, PyTorch's optimizer-in-backward pattern).")
    layerwise_clipping: Literal["global", "per_tensor"] = opt(
        "global", "Layer-wise: global = the step is decided after backward as without layer-wise (global-norm "
                  "clipping by train.max_grad_norm, a non-finite step skipped whole) from the low-rank "
                  "gradients kept until then (GaLore only); per_tensor = each weight updated in its own hook, "
                  "clipped by its own norm (a different algorithm; the only one layer-wise adamw has).")
    layerwise_accumulation: Literal["lowrank", "full"] = opt(
        "lowrank", "Layer-wise with train.grad_accum > 1: lowrank = project each micro-batch's gradient and "
                   "free it (memory saving survives accumulation; full gradients are kept only on "
                   "projector-refresh steps, which need them); full = accumulate full gradients as usual.")
    embeddings: Literal["train", "project", "freeze"] = opt(
        "train", "Input/output embedding matrices (the largest tensors at 150k-256k vocabularies): train = full "
                 "AdamW state, as the reference; project = GaLore-project them too (galore/galore8bit; state "
                 "vocab x rank); freeze = no gradient, no state (any full-weight method).")
    apollo_scale: float = opt(1.0, "APOLLO scale (apollo_mini uses rank 1 and its own scale).", gt=0)


@section
class TrainConfig:
    max_steps: int = opt(1000, "Optimizer steps to run (`--max-steps` overrides).", ge=1)
    batch_size: int = opt(8, "Samples per micro-batch per process (the online experiment uses 1-2).", ge=1)
    grad_accum: int = opt(1, "Micro-batches per optimizer step.", ge=1)
    lr: float = opt(1e-5, "Peak learning rate (above 1 is a typo, not a rate: refused).", gt=0, le=1.0)
    schedule: Literal["constant", "cosine", "linear"] = opt(
        "constant", "After warm-up: constant (continual training), cosine or linear decay to min_lr_ratio.")
    warmup_steps: int = opt(0, "Linear warm-up steps (a run started from a checkpoint warms up again).", ge=0)
    min_lr_ratio: float = opt(0.1, "cosine/linear: final lr as a share of lr.", ge=0.0, le=1.0)
    weight_decay: float = opt(0.0, "Decoupled weight decay.", ge=0.0)
    betas: list[float] = opt([0.9, 0.999], "Adam betas.")
    eps: float = opt(1e-8, "Adam epsilon.", gt=0)
    max_grad_norm: Optional[float] = opt(1.0, "Clip the global gradient norm (layer-wise: see "
                                               "method.layerwise_clipping); null = no clipping.", gt=0)
    precision: Literal["auto", "fp32", "bf16-mixed", "bf16"] = opt(
        "auto", "auto = bf16-mixed on GPU, fp32 on CPU. bf16-mixed = fp32 master weights, gradients and optimizer "
                "state, bf16 compute (autocast). bf16 = pure bf16 weights, gradients and moments (half the "
                "state memory), every weight and moment update computed in fp32 and stochastically rounded (plain "
                "bf16 arithmetic loses most small updates); opt-in.")
    order: Literal["shuffled", "stream", "by_domain"] = opt(
        "shuffled", "shuffled = seeded permutation per epoch; stream = arrival order (file / prepared order: "
                    "online learning); by_domain = the stream regrouped by domain in order of first "
                    "appearance (topic shifts for the online experiment).")
    single_pass: bool = opt(False, "Stop once every training sample was trained on once (online mode).")
    activation_checkpointing: bool = opt(False, "Recompute activations in backward (less memory, ~30% slower).")
    loss_chunk_tokens: int = opt(0, "> 0: compute the output head and the loss this many tokens at a time, "
                                    "recomputed in backward, so the fp32 logits (tokens x vocabulary) never all "
                                    "exist; 0 = all at once. 1024 is a good start at 150k-256k vocabularies.",
                                 ge=0)
    save_every: int = opt(500, "Checkpoint every N steps (and at the end); 0 = only at the end.", ge=0)
    keep_last: int = opt(2, "Checkpoints to keep.", ge=1)
    max_bad_steps: int = opt(5, "Stop after this many non-finite steps in a row (a checkpoint of the last "
                                "good state is written).", ge=1)

    def validate(self, path: str) -> None:
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"{path}.betas", f"must be two numbers in [0, 1); got {self.betas}")


@section
class ReplayConfig:
    ratio: float = opt(0.0, "Share of each batch's samples that are replayed (the seed: 0, 0.1, 0.2).",
                       ge=0.0, le=0.9)
    source: Literal["original", "reservoir", "both"] = opt(
        "original", "original = text of the original distribution; reservoir = past conversations (uniform "
                    "reservoir sample of everything seen); both = either, by original_share.")
    original: Optional[SourceConfig] = opt(
        SourceConfig(path="allenai/c4", format="text", subset="en", split="train", limit=100000),
        "Original-distribution text to replay (C4/RedPajama style, or any text). When it is the same source "
        "as eval.original, replay uses only documents outside the evaluation's held-out 10%.")
    reservoir_size: int = opt(10000, "Past samples the reservoir keeps.", ge=1)
    original_share: float = opt(0.5, "With source=both: share of replayed samples taken from the original "
                                     "text.", ge=0.0, le=1.0)

    def validate(self, path: str) -> None:
        if self.ratio > 0 and self.source in ("original", "both") and self.original is None:
            raise ConfigError(f"{path}.original", f"is needed with ratio > 0 and source {self.source}")


