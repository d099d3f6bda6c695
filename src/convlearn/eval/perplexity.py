"""Perplexity over prepared samples: per token and as bits per byte, over all tokens and assistant tokens."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..train.batches import collate


@torch.no_grad()
def sample_losses(model, dataset, pad_id: int, batch_size: int = 8, limit: int | None = None) -> dict:
    """Summed next-token loss (nats), token and byte counts under both masks, over the first `limit` samples.

    One forward pass per batch serves both masks. Bytes are those of the predicted tokens' text, so
    bits per byte = nats / ln 2 / bytes compares across tokenizers.
    """
    device = next(model.parameters()).device
    n = len(dataset) if limit is None else min(limit, len(dataset))
    totals = {k: 0.0 for k in ("nats_all", "tokens_all", "bytes_all", "nats_assistant", "tokens_assistant",
                               "bytes_assistant")}
    for start in range(0, n, batch_size):
        rows = dataset[start:min(n, start + batch_size)]
        batch = collate(rows["input_ids"], rows["token_mask"], pad_id)
        assistant = collate(rows["input_ids"], rows["assistant_mask"], pad_id)["loss_mask"]
        ids = batch["input_ids"].to(device)
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(device)).logits[:, :-1].float()
        nats = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").cpu()
        byte_counts = _padded_ints(rows["token_bytes"], ids.shape[1])[:, 1:]
        for name, mask in (("all", batch["loss_mask"][:, 1:]), ("assistant", assistant[:, 1:])):
            totals[f"nats_{name}"] += float(nats[mask].double().sum())
            totals[f"tokens_{name}"] += int(mask.sum())
            totals[f"bytes_{name}"] += int(byte_counts[mask].sum())
    return {"samples": n, **totals}


def _padded_ints(lists, width: int) -> torch.Tensor:
    out = torch.zeros((len(lists), width), dtype=torch.long)
    for i, x in enumerate(lists):
        out[i, :len(x)] = torch.as_tensor(np.asarray(x, dtype=np.int64))
    return out


def perplexity_figures(sums: dict) -> dict:
    """loss (nats/token), ppl, bits per byte and the counts they rest on, for both masks."""
    out = {"samples": sums["samples"]}
    for name in ("all", "assistant"):
        tokens, nats, nbytes = sums[f"tokens_{name}"], sums[f"nats_{name}"], sums[f"bytes_{name}"]
        loss = nats / tokens if tokens else float("nan")
        out[name] = {"loss": loss, "ppl": math.exp(loss) if tokens else float("nan"),
                     "bits_per_byte": nats / math.log(2) / nbytes if nbytes else float("nan"),
                     "tokens": int(tokens), "bytes": int(nbytes)}
    return out
