"""Micro-batches from the prepared (Arrow) samples, in a seeded order, with a cursor that is part of the state.

The order of a global micro-batch (batch_size x world_size samples) is the same for any number of processes;
rank r takes its contiguous slice, so a 2-process run sees exactly the samples a 1-process run with twice the
batch sees.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from ..data.batching import collate


class BatchStream:
    def __init__(self, dataset, batch_size: int, *, seed: int, order: str, mask: str, pad_id: int,
                 rank: int = 0, world: int = 1, replay=None, original=None, single_pass: bool = False):
        if len(dataset) == 0:
            raise ValueError("no training samples")
        self.ds = dataset
        self.n = len(dataset)
        self.batch_size, self.seed, self.order, self.mask = batch_size, seed, order, mask
        self.single_pass, self.exhausted = single_pass, False
        self.pad_id, self.rank, self.world = pad_id, rank, world
        self.epoch, self.pos = 0, 0
        self._order = self._order_for(0)
        self.replay, self.original = replay, original  # ReplayMixer, original-distribution samples

    def _order_for(self, epoch: int) -> np.ndarray:
        if self.order == "stream":
            return np.arange(self.n)
        if self.order == "by_domain":  # stable: arrival order within each domain, domains by first arrival
            domains = self.ds["domain"]
            rank = {d: i for i, d in enumerate(dict.fromkeys(domains))}
            return np.argsort([rank[d] for d in domains], kind="stable")
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    @property
    def done(self) -> bool:
        """Single pass and every sample trained on."""
        return self.single_pass and self.pos >= self.n

    def state(self) -> dict:
        out = {"epoch": self.epoch, "pos": self.pos, "exhausted": self.exhausted}
        if self.replay is not None:
            out["replay"] = self.replay.state()
        return out

    def load_state(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.exhausted = bool(state.get("exhausted", False))
        self._order = self._order_for(self.epoch)
        if self.replay is not None and "replay" in state:
            self.replay.load_state(state["replay"])

    def _take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos >= self.n:
                if self.single_pass:  # online: each sample once; the last batch may be short
                    self.exhausted = True
                    break
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._order_for(self.epoch)
            step = min(k - len(out), self.n - self.pos)
            out.extend(int(i) for i in self._order[self.pos:self.pos + step])
            self.pos += step
        return out

    def next(self) -> dict:
        """This rank's part of the next global micro-batch, padded on the right. With replay, some slots hold
        a replayed sample: original-distribution text (every token a target) or a past conversation."""
        k = self.batch_size * self.world
        slots = self.replay.plan(k) if self.replay is not None else [("new", None)] * k
        fresh = iter(self._take(sum(1 for kind, _ in slots if kind == "new")))
        slots = [(kind, next(fresh, None) if kind == "new" else i) for kind, i in slots]
        if self.replay is not None:
            for kind, i in slots:
                if kind == "new":
                    self.replay.offer(i)
        if self.single_pass:
            slots = [(kind, i) for kind, i in slots if i is not None]  # new slots the data could not fill
        mine = slots[self.rank * self.batch_size:(self.rank + 1) * self.batch_size] or slots[:1]
        ids, masks = [], []
        for kind, i in mine:
            if kind == "original":
                row = self.original[i]
                ids.append(row["input_ids"])
                masks.append(row["token_mask"])
            else:
                row = self.ds[i]
                ids.append(row["input_ids"])
                masks.append(row[self.mask])
        batch = collate(ids, masks, self.pad_id, [i for _, i in mine])
        batch["kinds"] = [kind for kind, _ in mine]
        packed = "domains" in self.ds.column_names
        batch["domains"] = [d for kind, i in mine if kind == "new"
                            for d in (self.ds[i]["domains"] if packed else [self.ds[i]["domain"]])]
        return batch


def token_losses(model, batch: dict, autocast=None, chunk_tokens: int = 0) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropy over the loss mask, number of those tokens).

    `chunk_tokens` > 0: the output head and the loss run over that many tokens at a time, each chunk
    recomputed in backward, so the logits (tokens x vocabulary, upcast to fp32: 1.2 GB for 2k tokens at a 152k
    vocabulary) never exist all at once; the model's own forward then computes one position's logits only."""
    device = next(model.parameters()).device
    ids = batch["input_ids"].to(device)
    target_mask = batch["loss_mask"].to(device)[:, 1:]
    targets = ids[:, 1:][target_mask]
    ctx = autocast if autocast is not None else torch.autocast(device.type, enabled=False)
    with ctx:
        if chunk_tokens <= 0:
            logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(device)).logits
            logits = logits[:, :-1][target_mask].float()
            return torch.nn.functional.cross_entropy(logits, targets, reduction="sum"), int(target_mask.sum())
        out = model(input_ids=ids, attention_mask=batch["attention_mask"].to(device), output_hidden_states=True,
                    logits_to_keep=1)
        hidden = out.hidden_states[-1][:, :-1][target_mask]
        return chunked_cross_entropy(hidden, targets, model, chunk_tokens), int(target_mask.sum())


def _head_loss(hidden, targets, weight, bias, softcap, reduction: str = "sum"):
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    if softcap:  # Gemma-2 caps its final logits
        logits = torch.tanh(logits / softcap) * softcap
    return torch.nn.functional.cross_entropy(logits, targets, reduction=reduction)


def _head(model):
    inner = getattr(model, "module", model)  # DDP
    return inner.get_output_embeddings(), getattr(inner.config, "final_logit_softcapping", None)


@torch.no_grad()
def chunked_token_nats(hidden: torch.Tensor, targets: torch.Tensor, model, chunk_tokens: int) -> torch.Tensor:
    """Each token's cross-entropy (fp32) of the output head over `hidden` [tokens, width], `chunk_tokens` at a
    time: evaluation's counterpart of `chunked_cross_entropy` (no backward, so no checkpointing)."""
    head, softcap = _head(model)
    return torch.cat([_head_loss(hidden[i:i + chunk_tokens], targets[i:i + chunk_tokens], head.weight, head.bias,
                                 softcap, "none") for i in range(0, hidden.shape[0], chunk_tokens)])


def chunked_cross_entropy(hidden: torch.Tensor, targets: torch.Tensor, model, chunk_tokens: int) -> torch.Tensor:
    """Sum of cross-entropy of the model's output head over `hidden` [tokens, width], `chunk_tokens` at a time
    with activation checkpointing per chunk (the head's weight gets the same gradient as unchunked)."""
    head, softcap = _head(model)
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, hidden.shape[0], chunk_tokens):
        total = total + checkpoint(_head_loss, hidden[i:i + chunk_tokens], targets[i:i + chunk_tokens],
                                   head.weight, head.bias, softcap, use_reentrant=False)
    return total
