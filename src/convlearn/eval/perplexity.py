"""Perplexity over prepared samples: per token and as bits per byte, over all tokens and assistant tokens,
overall and grouped by domain / language / source / a user's domain map.

One forward pass per batch serves both masks and every grouping. Samples are batched by length (less
padding), from the already tokenized Arrow cache (no re-tokenizing). Bytes are those of the predicted
tokens' text, so bits per byte = nats / ln 2 / bytes compares models with different tokenizers.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..data.batching import collate
from ..train.batches import chunked_token_nats

# the output head runs over this many tokens at a time: full logits of a batch (8 x 2048 tokens at Qwen's 152k
# vocabulary, fp32) would be ~10 GB and set the run's peak memory; a chunk's are 1.2 GB
EVAL_CHUNK_TOKENS = 2048

FIELDS = ("nats_all", "tokens_all", "bytes_all", "nats_assistant", "tokens_assistant", "bytes_assistant")


@torch.no_grad()
def sample_losses(model, dataset, pad_id: int, batch_size: int = 8, limit: int | None = None,
                  mask_column: str = "token_mask", chunk_tokens: int = EVAL_CHUNK_TOKENS) -> dict[str, np.ndarray]:
    """Per sample: summed next-token loss (nats), token and byte counts under `mask_column` (`_all`) and the
    assistant mask (`_assistant`), for the first `limit` samples. `chunk_tokens` <= 0: the model's own full
    logits (the reference the chunked head is tested against)."""
    device = next(model.parameters()).device
    n = len(dataset) if limit is None else min(limit, len(dataset))
    rows = dataset.select(range(n)) if n < len(dataset) else dataset
    lengths = np.array([len(x) for x in rows["input_ids"]])
    order = np.argsort(-lengths, kind="stable")
    out = {k: np.zeros(n, dtype=np.float64) for k in FIELDS}
    has_assistant = "assistant_mask" in rows.column_names
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size].tolist()
        batch_rows = rows[idx]
        batch = collate(batch_rows["input_ids"], batch_rows[mask_column], pad_id)
        ids = batch["input_ids"].to(device)
        nats = _token_nats(model, ids, batch["attention_mask"].to(device), chunk_tokens).view(ids.shape[0], -1).cpu()
        nbytes = _padded(batch_rows["token_bytes"], ids.shape[1])[:, 1:]
        masks = {"all": batch["loss_mask"][:, 1:]}
        if has_assistant:
            masks["assistant"] = collate(batch_rows["input_ids"], batch_rows["assistant_mask"],
                                         pad_id)["loss_mask"][:, 1:]
        for name, mask in masks.items():
            m = mask.double()
            out[f"nats_{name}"][idx] = (nats.double() * m).sum(1).numpy()
            out[f"tokens_{name}"][idx] = m.sum(1).numpy()
            out[f"bytes_{name}"][idx] = (nbytes.double() * m).sum(1).numpy()
    return out


def _token_nats(model, ids, attention_mask, chunk_tokens: int) -> torch.Tensor:
    """Every position's next-token loss, flat; 2-D cross-entropy on contiguous rows (half the time of the
    (B, V, T) layout on CPU)."""
    targets = ids[:, 1:].reshape(-1)
    if chunk_tokens <= 0:
        logits = model(input_ids=ids, attention_mask=attention_mask).logits[:, :-1]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets,
                                                 reduction="none")
    # as training's chunked loss: the final hidden states, one position's logits from the model's own head
    out = model(input_ids=ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1)
    hidden = out.hidden_states[-1][:, :-1]
    return chunked_token_nats(hidden.reshape(-1, hidden.shape[-1]), targets, model, chunk_tokens)


def _padded(lists, width: int) -> torch.Tensor:
    out = torch.zeros((len(lists), width), dtype=torch.long)
    for i, x in enumerate(lists):
        out[i, :len(x)] = torch.as_tensor(np.asarray(x, dtype=np.int64))
    return out


def figures(per_sample: dict[str, np.ndarray], select: np.ndarray | None = None) -> dict:
    """loss (nats/token), perplexity, bits per byte and the counts they rest on, for both masks."""
    out = {"samples": int(len(per_sample["nats_all"]) if select is None else select.sum())}
    for name in ("all", "assistant"):
        vals = {k: float((per_sample[f"{k}_{name}"] if select is None else per_sample[f"{k}_{name}"][select]).sum())
                for k in ("nats", "tokens", "bytes")}
        tokens = vals["tokens"]
        loss = vals["nats"] / tokens if tokens else float("nan")
        out[name] = {"loss": loss, "ppl": math.exp(loss) if tokens else float("nan"),
                     "bits_per_byte": vals["nats"] / math.log(2) / vals["bytes"] if vals["bytes"] else float("nan"),
                     "tokens": int(tokens), "bytes": int(vals["bytes"]),
                     "loss_se": _ratio_se(per_sample[f"nats_{name}"], per_sample[f"tokens_{name}"], select, loss)}
    return out


def _ratio_se(nats: np.ndarray, tokens: np.ndarray, select, loss: float) -> float | None:
    """Standard error of a loss that is a ratio of sums over samples (nats / tokens), by linearisation: the
    spread of the samples' residuals nats_i - loss * tokens_i. None with fewer than two samples."""
    if select is not None:
        nats, tokens = nats[select], tokens[select]
    n = len(nats)
    if n < 2 or not tokens.sum():
        return None
    resid = nats - loss * tokens
    return float(math.sqrt((resid ** 2).sum() / (n * (n - 1))) / tokens.mean())


def per_sample_json(per_sample: dict[str, np.ndarray], ids: list[str]) -> dict:
    """Every sample's nats and token counts under both masks, with its id: what a paired bootstrap of a change
    between two evaluations of the same samples needs (eval records keep it; eval/stats.py uses it)."""
    out = {"ids": list(ids)}
    for k in ("nats_all", "tokens_all", "nats_assistant", "tokens_assistant"):
        out[k] = [round(float(v), 4) for v in per_sample[k]]
    return out


def grouped_figures(per_sample: dict[str, np.ndarray], labels: list[str]) -> dict[str, dict]:
    """The same figures per label (domain, language, ...); the groups' token counts add up to the total."""
    arr = np.asarray(labels)
    return {str(label): figures(per_sample, arr == label) for label in sorted(set(labels))}
