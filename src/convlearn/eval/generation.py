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
    positions go through the output head (a chunk at a time), and a prompt shared by several continuations (a
    probe's answer and its distractors) is run once, its cache reused for all of them: with a 262k-token
    vocabulary and a 270 M body on a CPU, scoring every prompt position for every candidate was most of a probe
    evaluation's time, for numbers nobody reads."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    if all(len(g) == 1 for g in groups.values()):
        return _separate_logprobs(model, tokenizer, prompts, continuations, batch_size)
    out: list[tuple[float, int] | None] = [None] * len(prompts)
    by_count: dict[int, list[str]] = {}  # prompts with as many candidates batch together (one cache repeat)
    for prompt, idx in groups.items():
        by_count.setdefault(len(idx), []).append(prompt)
    for k, group in by_count.items():
        for start in range(0, len(group), batch_size):
            batch = group[start:start + batch_size]
            for i, score in zip([i for p in batch for i in groups[p]],
                                _shared_prompt_batch(model, tokenizer, batch, [[continuations[i] for i in groups[p]]
                                                                               for p in batch], k)):
                out[i] = score
    return out  # type: ignore[return-value]


def _shared_prompt_batch(model, tokenizer, prompts: list[str], candidates: list[list[str]], k: int
                         ) -> list[tuple[float, int]]:
    """Scores of `k` candidates for each of `prompts`: the prompts run once (left-padded, positions as if
    unpadded), their cache repeated k times, the candidates right-padded after it."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    n, longest = len(enc), max(len(e) for e in enc)
    ids = torch.full((n, longest), pad, dtype=torch.long, device=device)
    attn = torch.zeros((n, longest), dtype=torch.long, device=device)
    for row, e in enumerate(enc):
        ids[row, longest - len(e):] = torch.tensor(e, device=device)
        attn[row, longest - len(e):] = 1
    positions = (attn.cumsum(1) - 1).clamp(min=0)
    first = model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True,
                  output_hidden_states=True, logits_to_keep=1)
    conts = [tokenizer(c, add_special_tokens=False)["input_ids"] for cs in candidates for c in cs]
    width = max(len(b) for b in conts)
    cand = torch.full((n * k, width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((n * k, width), dtype=torch.bool, device=device)
    for row, b in enumerate(conts):
        cand[row, :len(b)] = torch.tensor(b, device=device)
        mask[row, :len(b)] = True
    cache = first.past_key_values
    cache.batch_repeat_interleave(k)
    lengths = torch.tensor([len(e) for e in enc], device=device).repeat_interleave(k)
    hidden = model(input_ids=cand, attention_mask=torch.cat([attn.repeat_interleave(k, 0), mask.long()], 1),
                   position_ids=lengths[:, None] + torch.arange(width, device=device), cache=cache,
                   output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
    last = first.hidden_states[-1][:, -1:].repeat_interleave(k, 0)  # predicts each candidate's first token
    nats = chunked_token_nats(torch.cat([last, hidden[:, :-1]], 1)[mask], cand[mask], model, 1024).float().cpu()
    counts = mask.sum(1).tolist()
    return [(-float(part.sum()), int(c)) for part, c in zip(torch.split(nats, counts), counts)]


def _separate_logprobs(model, tokenizer, prompts: list[str], continuations: list[str],
                       batch_size: int) -> list[tuple[float, int]]:
    """continuation_logprobs for prompts that are all different: padded batches, the head over the
    continuations' positions only."""
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
