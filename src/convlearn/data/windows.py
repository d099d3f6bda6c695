"""Windows for conversations longer than max_seq_len, cut at turn boundaries.

A window is the system message (if any), some preceding context turns (no loss) and new turns. The first
window has no context; later windows keep up to `window_context_fraction` of the window for the most recent
preceding turns. A unit is a user message with the assistant reply after it; windows never cut a unit, except
when one unit alone exceeds the window (the caller then splits it by tokens and counts that).
"""
from __future__ import annotations

import numpy as np


def plan_windows(full, offsets: np.ndarray, renderer, msgs: list[dict]) -> list[tuple[int, int, int]]:
    """[(context_from, new_from, upto)] message indices per window, from token costs measured on the full
    rendering, each window checked by rendering it (the estimate ignores per-window template overhead)."""
    n = len(msgs)
    first = 1 if msgs[0]["role"] == "system" else 0
    bounds = [full.spans[i][0] for i in range(n)] + [len(full.text)]
    idx = np.searchsorted(offsets[:, 0], bounds, side="left")
    cost = np.diff(idx)
    prefix = int(idx[first])
    units: list[list[int]] = []
    for i in range(first, n):
        if msgs[i]["role"] == "user" or not units:
            units.append([i, i + 1])
        else:
            units[-1][1] = i + 1
    ucost = [int(cost[a:b].sum()) for a, b in units]
    budget = renderer.max_seq_len - prefix
    system = msgs[:first]

    def length(c: int, v: int) -> int:
        text = renderer.render_text(system + msgs[units[c][0]:units[v - 1][1]]).text
        return len(renderer.tok(text, add_special_tokens=False)["input_ids"])

    plans = []
    u = 0
    while u < len(units):
        reserve = min(int(renderer.context_fraction * budget), sum(ucost[:u])) if u else 0
        v, used = u, 0
        while v < len(units) and (v == u or used + ucost[v] <= budget - reserve):
            used += ucost[v]
            v += 1
        c = u
        while c > 0 and used + ucost[c - 1] <= budget:
            used += ucost[c - 1]
            c -= 1
        while length(c, v) > renderer.max_seq_len and not (v == u + 1 and c == u):
            if c < u:
                c += 1  # drop the oldest context turn first: new turns are what the window is for
            else:
                v -= 1
        plans.append((units[c][0], units[u][0], units[v - 1][1]))
        u = v
    return plans
