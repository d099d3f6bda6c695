"""Windows for conversations longer than max_seq_len, cut at turn boundaries.

A window is the system message (if any), some preceding context turns (no loss) and new turns. The first
window has no context; later windows keep up to `window_context_fraction` of the window for the most recent
preceding turns. A unit is a user message with the assistant reply after it; windows never cut a unit, except
when one unit alone exceeds the window (the caller then splits it by tokens and counts that).
"""
from __future__ import annotations

import numpy as np


def plan_windows(full, full_enc, renderer, msgs: list[dict]) -> list[tuple]:
    """[(rendered, encoded, first_new_message, offset)] per window; a window's message j (past the system
    message) is message j + offset of `msgs`.

    Turn costs are measured on the full rendering; a later window also pays the template's preamble (Qwen's
    default system prompt, Llama's date header) that the full rendering charged to its first turn. Each
    window is rendered once; the few whose estimate was short are shrunk and rendered again.
    """
    n = len(msgs)
    first = 1 if msgs[0]["role"] == "system" else 0
    spans = full.byte_spans()
    idx = np.searchsorted(full_enc.start, [s[0] for s in spans] + [full.nbytes()], side="left")
    cost = np.diff(idx)
    prefix = int(idx[first])
    header = [int(np.searchsorted(full_enc.start, spans[i][1]) - idx[i]) for i in range(n)]
    later_user = [header[i] for i in range(first + 1, n) if msgs[i]["role"] == "user"]
    preamble = max(0, header[first] - (min(later_user) if later_user else header[first]))
    units: list[list[int]] = []
    for i in range(first, n):
        if msgs[i]["role"] == "user" or not units:
            units.append([i, i + 1])
        else:
            units[-1][1] = i + 1
    ucost = [int(cost[a:b].sum()) for a, b in units]
    system = msgs[:first]

    def render(c: int, u: int, v: int):
        r = renderer.render_text(system + msgs[units[c][0]:units[v - 1][1]])
        # The first window trains on everything (system turn included), later ones on their new turns.
        first_new = 0 if u == 0 else units[u][0] - units[c][0] + first
        return r, renderer.encoder.encode([r.text])[0], first_new, units[c][0] - first

    plans = []
    u = 0
    while u < len(units):
        budget = renderer.max_seq_len - prefix - (preamble if u else 0)
        reserve = min(int(renderer.context_fraction * budget), sum(ucost[:u])) if u else 0
        v, used = u, 0
        while v < len(units) and (v == u or used + ucost[v] <= budget - reserve):
            used += ucost[v]
            v += 1
        c = u
        while c > 0 and used + ucost[c - 1] <= budget:
            used += ucost[c - 1]
            c -= 1
        window = render(c, u, v)
        while len(window[1].ids) > renderer.max_seq_len and not (v == u + 1 and c == u):
            if c < u:
                c += 1  # drop the oldest context turn first: new turns are what the window is for
            else:
                v -= 1
            renderer.stats.counts["window_estimates_redone"] += 1
            window = render(c, u, v)
        plans.append(window)
        u = v
    return plans
