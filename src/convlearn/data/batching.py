"""Token lists -> padded tensors: the one collate that training, perplexity and generation share."""
from __future__ import annotations

import numpy as np
import torch


def collate(ids: list, masks: list, pad_id: int, indices: list[int] | None = None) -> dict:
    """Right-padded `input_ids`, `attention_mask` and boolean `loss_mask` of a list of samples."""
    longest = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), longest), pad_id, dtype=torch.long)
    attention = torch.zeros((len(ids), longest), dtype=torch.long)
    loss_mask = torch.zeros((len(ids), longest), dtype=torch.bool)
    for i, (x, m) in enumerate(zip(ids, masks)):
        input_ids[i, :len(x)] = torch.as_tensor(np.asarray(x, dtype=np.int64))
        attention[i, :len(x)] = 1
        loss_mask[i, :len(m)] = torch.as_tensor(np.asarray(m, dtype=bool))
    return {"input_ids": input_ids, "attention_mask": attention, "loss_mask": loss_mask,
            "indices": indices or []}
