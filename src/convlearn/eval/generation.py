"""Greedy generation and reference log-likelihood for chat prompts, batched, on the live model."""
from __future__ import annotations

import torch

from ..data.batching import collate
from ..train.batches import chunked_token_nats


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy continuation of each rendered prompt, up to the model's end-of-turn token."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = [""] * len(prompts)
    enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(enc[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        longest = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), longest), pad, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for row, i in enumerate(idx):  # left padding, so every prompt ends where generation starts
            ids[row, longest - len(enc[i]):] = torch.tensor(enc[i])
            attention[row, longest - len(enc[i]):] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=attention.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad)
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[row, longest:], skip_special_tokens=True).strip()
    return out


@torch.no_grad()
def continuation_logprobs(model, tokenizer, prompts: list[str], continuations: list[str],
                          batch_size: int = 8) -> list[tuple[float, int]]:
    """(sum of log-probabilities, token count) of each continuation given its prompt. Only the continuation's
    positions go through the output head (a chunk at a time): with a 262k-token vocabulary the head over every
    prompt position was most of a probe evaluation's time, for numbers nobody reads."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, masks = [], []
    for p, c in zip(prompts, continuations):
        a = tokenizer(p, add_special_tokens=False)["input_ids"]
        b = tokenizer(c, add_special_tokens=False)["input_ids"]
        ids.append(a + b)
        masks.append([0] * len(a) + [1] * len(b))
    out: list[tuple[float, int]] = []
    for start in range(0, len(ids), batch_size):
        batch = collate(ids[start:start + batch_size], masks[start:start + batch_size], pad)
        x = batch["input_ids"].to(device)
        m = batch["loss_mask"][:, 1:].to(device).bool()
        hidden = model(input_ids=x, attention_mask=batch["attention_mask"].to(device), output_hidden_states=True,
                       logits_to_keep=1).hidden_states[-1][:, :-1][m]
        nats = chunked_token_nats(hidden, x[:, 1:][m], model, 1024).float().cpu()
        counts = m.sum(1).tolist()
        for row, part in enumerate(torch.split(nats, counts)):
            out.append((-float(part.sum()), int(counts[row])))
    return out
