"""What a finished training run reports: `Trainer.run()` fills the loop's figures, `run_training` adds what it
measured after the loop; `to_json()` is the content of the run's summary.json and `from_json` reads it back."""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class RunSummary:
    method: str                    # the method's name (`galore`)
    method_label: str              # with the settings that tell runs apart (`galore r=8`)
    steps: int
    tokens: int                    # input tokens trained on (the run's counter, across resumes)
    loss_tokens: int               # of those, the tokens in the loss
    skipped_steps: int             # steps with a non-finite loss or gradient
    final_loss: float | None       # the last finite step loss
    tokens_per_s: float | None     # this process's tokens over its wall time, scheduled evaluation left out
    throughput: dict               # tokens, train/eval seconds, per-step seconds and tokens
    mean_step_tokens_per_s: float | None
    peak_memory: dict              # per memory figure of the step records, its maximum (training only)
    world_size: int
    precision: str                 # the resolved mode: "fp32" | "bf16-mixed" | "bf16"
    time: dict                     # where the wall time went (data, compute, eval, checkpoint, other, wall)
    eval_peak_bytes: int | None = None  # evaluations' peak apart from training's: CUDA allocator, or RSS on CPU
    galore: dict | None = None     # the optimizer's projector statistics at the last step, for GaLore methods
    # -- added by run_training (experiments/run.py) on the main process ---------------------------------------
    final_model: str | None = None
    data: dict | None = None               # conversations, documents, heldout, skipped of the prepared data
    forgetting: dict | None = None         # the forgetting analysis' flags
    adaptation: dict | None = None         # a stream's steps to adapt at its domain switches
    # measured with the adaptation; null there when no phase could be compared
    backward_transfer: dict | None = None

    def to_json(self) -> dict:
        """The summary.json content: the loop's figures, then each extra that was measured."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("galore", "final_model", "data", "forgetting", "adaptation"):
            if out[key] is None:
                del out[key]
        if self.adaptation is None:
            del out["backward_transfer"]
        return out

    @classmethod
    def from_json(cls, d: dict) -> "RunSummary":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
