"""The statistics behind every verdict: intervals and tests over what the evaluation records keep per sample.

- A change in perplexity between two evaluations of the same held-out samples: a paired bootstrap over samples
  (resampling samples, not tokens: tokens of one conversation are not independent).
- A change in benchmark accuracy on the same questions: McNemar's exact test on the discordant questions and a
  paired bootstrap interval of the change.
- A difference between two groups of runs (replay vs none, over seeds): Welch's t-test and its interval.
- A ratio of throughputs: a bootstrap over each run's steps.
- Whether a score is distinguishable from chance at all: a one-sided binomial test.
scipy does the tests; the bootstraps are a few lines of numpy with a fixed seed, so reports are reproducible.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _aligned(a: dict, b: dict) -> tuple[dict, dict] | None:
    """Two per-sample records restricted to the samples both evaluated, in one order (None if none shared)."""
    if a.get("ids") == b.get("ids"):
        return a, b
    index_b = {k: i for i, k in enumerate(b.get("ids", []))}
    pairs = [(i, index_b[k]) for i, k in enumerate(a.get("ids", [])) if k in index_b]
    if not pairs:
        return None
    ia, ib = (list(x) for x in zip(*pairs))
    pick = lambda rec, idx: {k: [v[i] for i in idx] if isinstance(v, list) else v  # noqa: E731
                             for k, v in rec.items()}
    return pick(a, ia), pick(b, ib)


def ppl_change(before: dict, after: dict, mask: str = "assistant", n_boot: int = 2000, confidence: float = 0.95,
               seed: int = 0) -> dict | None:
    """Relative change of perplexity (after / before - 1) on the same samples, with a paired-bootstrap interval.
    `before` / `after`: per-sample records (`ids`, `nats_<mask>`, `tokens_<mask>`)."""
    aligned = _aligned(before, after)
    if aligned is None:
        return None
    a, b = aligned
    na, ta = np.asarray(a[f"nats_{mask}"]), np.asarray(a[f"tokens_{mask}"])
    nb, tb = np.asarray(b[f"nats_{mask}"]), np.asarray(b[f"tokens_{mask}"])
    keep = ta > 0
    na, ta, nb, tb = na[keep], ta[keep], nb[keep], tb[keep]
    if len(na) == 0:
        return None

    def change(idx):
        return np.exp(nb[idx].sum(-1) / tb[idx].sum(-1) - na[idx].sum(-1) / ta[idx].sum(-1)) - 1

    idx = _rng(seed).integers(0, len(na), (n_boot, len(na)))
    boot = change(idx)
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"change": float(change(np.arange(len(na)))), "low": float(lo), "high": float(hi),
            "samples": int(len(na)), "mask": mask}


def accuracy_change(before: list[int], after: list[int], n_boot: int = 2000, confidence: float = 0.95,
                    seed: int = 0, clusters: list | None = None) -> dict | None:
    """Change in accuracy (points) on the same questions: McNemar's exact p-value (two-sided, on the questions
    that changed) and a paired-bootstrap interval. With `clusters` (the fact each question asks about), the unit
    is the cluster: per-cluster accuracies, a bootstrap over clusters and a two-sided sign-flip p-value."""
    if not before or len(before) != len(after):
        return None
    if clusters is not None:
        if len(clusters) != len(before):
            return None
        ch = clustered_difference([float(v) for v in after], [float(v) for v in before], clusters, n_boot,
                                  confidence, seed)
        _, d = _cluster_means([a - b for a, b in zip(after, before)], clusters)
        two_sided = min(1.0, 2 * min(_sign_flip_p(d, seed), _sign_flip_p(-d, seed)))
        return {"change_points": 100 * ch["difference"], "low": 100 * ch["low"], "high": 100 * ch["high"],
                "p_value": two_sided, "questions": len(before), "clusters": ch["clusters"],
                "lost": sum(1 for a, b in zip(after, before) if b and not a),
                "gained": sum(1 for a, b in zip(after, before) if a and not b)}
    x, y = np.asarray(before), np.asarray(after)
    lost, gained = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    p = stats.binomtest(gained, lost + gained, 0.5).pvalue if lost + gained else 1.0
    idx = _rng(seed).integers(0, len(x), (n_boot, len(x)))
    boot = 100 * (y[idx].mean(-1) - x[idx].mean(-1))
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"change_points": float(100 * (y.mean() - x.mean())), "low": float(lo), "high": float(hi),
            "p_value": float(p), "questions": int(len(x)), "lost": lost, "gained": gained}


def above_chance(correct: list[int], chance: float, alpha: float = 0.05) -> dict:
    """Is an accuracy distinguishable from guessing? One-sided binomial test against the chance level."""
    n, k = len(correct), int(sum(correct))
    p = stats.binomtest(k, n, chance, alternative="greater").pvalue if n else 1.0
    return {"accuracy": k / n if n else None, "chance": chance, "questions": n, "p_value": float(p),
            "above_chance": bool(n and p < alpha)}


def welch(a: list[float], b: list[float], confidence: float = 0.95) -> dict | None:
    """Mean(a) - mean(b) with Welch's t interval and two-sided p-value (needs >= 2 values in each group)."""
    if len(a) < 2 or len(b) < 2:
        return None
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence)
    return {"difference": float(np.mean(a) - np.mean(b)), "low": float(ci.low), "high": float(ci.high),
            "p_value": float(res.pvalue), "n": [len(a), len(b)]}


def throughput_ratio(steps_a: tuple[list[int], list[float]], steps_b: tuple[list[int], list[float]],
                     n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict | None:
    """Throughput of run A over run B (tokens / seconds of their steps), with a bootstrap over each run's steps:
    the rare slow steps (projector refreshes) are resampled at their rate, not averaged away."""
    (ta, sa), (tb, sb) = (tuple(np.asarray(x, dtype=float) for x in s) for s in (steps_a, steps_b))
    if not len(ta) or not len(tb) or sa.sum() <= 0 or sb.sum() <= 0:
        return None
    rng = _rng(seed)
    ia = rng.integers(0, len(ta), (n_boot, len(ta)))
    ib = rng.integers(0, len(tb), (n_boot, len(tb)))
    boot = (ta[ia].sum(-1) / sa[ia].sum(-1)) / (tb[ib].sum(-1) / sb[ib].sum(-1))
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"ratio": float((ta.sum() / sa.sum()) / (tb.sum() / sb.sum())), "low": float(lo), "high": float(hi)}


def slope_interval(xs: list[float], ys: list[float], confidence: float = 0.95) -> dict:
    """Least squares of y on ln(x) with the slope's t interval and R² (scipy.stats.linregress)."""
    lx = np.log(np.asarray(xs, dtype=float))
    fit = stats.linregress(lx, ys)
    n = len(xs)
    half = stats.t.ppf((1 + confidence) / 2, n - 2) * fit.stderr if n > 2 else math.inf
    return {"slope": float(fit.slope), "intercept": float(fit.intercept), "r2": float(fit.rvalue ** 2),
            "low": float(fit.slope - half), "high": float(fit.slope + half), "p_value": float(fit.pvalue), "n": n}


def _changes_on_shared_samples(runs: list[tuple[dict, dict]], mask: str, n_boot: int, seed: int):
    """For runs given as (before, after) per-sample records of the same samples: each run's relative perplexity
    change on the full set and on `n_boot` shared resamples (the same samples drawn for every run)."""
    ids = None
    arrays = []
    for before, after in runs:
        if before is None or after is None:
            return None
        aligned = _aligned(before, after)
        if aligned is None:
            return None
        a, b = aligned
        ids = a["ids"] if ids is None else ids
        if a["ids"] != ids:
            return None
        arrays.append([np.asarray(x[f"{k}_{mask}"]) for x in (a, b) for k in ("nats", "tokens")])
    n = len(ids)
    idx = _rng(seed).integers(0, n, (n_boot, n))

    def change(arr, sel):
        na, ta, nb, tb = (x[sel] for x in arr)
        return np.exp(nb.sum(-1) / tb.sum(-1) - na.sum(-1) / ta.sum(-1)) - 1
    return [(float(change(arr, np.arange(n))), change(arr, idx)) for arr in arrays], n


def gain_ratio(a: tuple[dict, dict], b: tuple[dict, dict], mask: str = "assistant", n_boot: int = 2000,
               confidence: float = 0.95, seed: int = 0) -> dict | None:
    """Run A's perplexity gain as a multiple of run B's (ratio of relative changes), on the same held-out
    samples, with a paired bootstrap interval; and each run's own relative change with its interval
    (`a_change`, `a_low`, `a_high`, and the same for b): a ratio of two changes is a gain ratio only when both are
    gains (two perplexities that both rise give a ratio too, and it means nothing)."""
    got = _changes_on_shared_samples([a, b], mask, n_boot, seed)
    if got is None:
        return None
    ((ca, boot_a), (cb, boot_b)), n = got
    q = [(1 - confidence) / 2, (1 + confidence) / 2]
    lo, hi = np.quantile(boot_a / boot_b, q)
    (alo, ahi), (blo, bhi) = np.quantile(boot_a, q), np.quantile(boot_b, q)
    return {"ratio": ca / cb, "low": float(lo), "high": float(hi), "samples": n,
            "a_change": float(ca), "a_low": float(alo), "a_high": float(ahi),
            "b_change": float(cb), "b_low": float(blo), "b_high": float(bhi)}


def paired_change_difference(a: tuple[dict, dict] | None, b: tuple[dict, dict] | None, n_boot: int = 2000,
                             confidence: float = 0.95, seed: int = 0, mask: str = "all") -> dict | None:
    """Run A's relative perplexity change minus run B's on the same samples (e.g. no replay minus replay: how
    much less B forgot), with a paired bootstrap interval."""
    if a is None or b is None:
        return None
    got = _changes_on_shared_samples([a, b], mask, n_boot, seed)
    if got is None:
        return None
    ((ca, boot_a), (cb, boot_b)), n = got
    lo, hi = np.quantile(boot_a - boot_b, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"difference": ca - cb, "low": float(lo), "high": float(hi), "samples": n}


# -- clustered statistics: the unit of analysis is the cluster (a fact asked in several phrasings) ------------
def _cluster_means(values: list[float], clusters: list) -> tuple[list, np.ndarray]:
    """Mean of `values` per cluster, clusters in first-seen order."""
    order: dict = {}
    for v, c in zip(values, clusters):
        order.setdefault(c, []).append(float(v))
    return list(order), np.asarray([np.mean(v) for v in order.values()])


def _sign_flip_p(d: np.ndarray, seed: int = 0, draws: int = 20000) -> float:
    """One-sided p-value that the mean of the per-cluster differences `d` exceeds 0: the share of sign patterns
    (all 2^k when k <= 16, else `draws` random ones) whose mean is at least the observed one. Exact under the null
    that each cluster's difference is symmetric about 0; it needs no normality and counts clusters, not trials."""
    k = len(d)
    if k == 0:
        return 1.0
    if k <= 16:
        signs = 1 - 2 * ((np.arange(2 ** k)[:, None] >> np.arange(k)) & 1)
    else:
        signs = _rng(seed).choice([-1, 1], size=(draws, k))
    stat = (signs * d).mean(-1)
    return float((stat >= d.mean() - 1e-12).mean())


def clustered_difference(a: list[float], b: list[float] | float, clusters: list, n_boot: int = 2000,
                         confidence: float = 0.95, seed: int = 0) -> dict | None:
    """Mean over clusters of (a - b), `a` and `b` paired per item (or `b` one number per item, e.g. chance), with a
    bootstrap interval over clusters and the one-sided sign-flip p-value that it is above 0. Items of one cluster
    (phrasings of one fact) are not independent: resampling them as if they were overstates the evidence."""
    if not a or len(a) != len(clusters):
        return None
    bb = b if isinstance(b, list) else [b] * len(a)
    if len(bb) != len(a):
        return None
    _, d = _cluster_means([x - y for x, y in zip(a, bb)], clusters)
    idx = _rng(seed).integers(0, len(d), (n_boot, len(d)))
    lo, hi = np.quantile(d[idx].mean(-1), [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"difference": float(d.mean()), "low": float(lo), "high": float(hi), "p_value": _sign_flip_p(d, seed),
            "clusters": int(len(d)), "items": len(a)}


def clustered_group_difference(a: list[float], a_clusters: list, b: list[float], b_clusters: list,
                               n_boot: int = 2000, confidence: float = 0.95, seed: int = 0,
                               draws: int = 20000) -> dict | None:
    """Mean per-cluster score of group A minus group B (two disjoint sets of facts, e.g. consented and
    unconsented ones on the same model), with a bootstrap interval resampling clusters within each group and a
    one-sided permutation p-value (cluster labels shuffled between the groups) that A is above B."""
    if not a or not b:
        return None
    _, ma = _cluster_means(a, a_clusters)
    _, mb = _cluster_means(b, b_clusters)
    rng = _rng(seed)
    boot = (ma[rng.integers(0, len(ma), (n_boot, len(ma)))].mean(-1)
            - mb[rng.integers(0, len(mb), (n_boot, len(mb)))].mean(-1))
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    pooled, observed = np.concatenate([ma, mb]), ma.mean() - mb.mean()
    perms = np.argsort(rng.random((draws, len(pooled))), axis=1)
    stat = pooled[perms[:, :len(ma)]].mean(-1) - pooled[perms[:, len(ma):]].mean(-1)
    return {"difference": float(observed), "low": float(lo), "high": float(hi),
            "p_value": float(((stat >= observed - 1e-12).sum() + 1) / (draws + 1)), "clusters": [len(ma), len(mb)]}


def scaling_slope(sizes: list[float], finals: list[dict], mask: str = "assistant", n_boot: int = 2000,
                  confidence: float = 0.95, seed: int = 0) -> dict | None:
    """Slope of final perplexity against ln(data size) over runs scored on the same held-out samples, with a
    bootstrap interval resampling those samples (the same draw for every run). With three sizes a t interval on
    the fit's residuals has one degree of freedom and is uninformative; the held-out conversations are where the
    evaluation's noise is. Training noise (seeds) is not in it: the figure says so."""
    if len(sizes) < 3 or any(f is None for f in finals):
        return None
    ids = finals[0].get("ids")
    if not ids or any(f.get("ids") != ids for f in finals):
        return None
    nats = np.stack([np.asarray(f[f"nats_{mask}"], dtype=float) for f in finals])
    toks = np.stack([np.asarray(f[f"tokens_{mask}"], dtype=float) for f in finals])
    keep = toks.min(0) > 0
    nats, toks = nats[:, keep], toks[:, keep]
    x = np.log(np.asarray(sizes, dtype=float))
    xc = x - x.mean()

    def slope(sel):  # least squares of ppl on ln(size), one per resample (a row of sel: sample indices)
        ppl = np.exp(nats[:, sel].sum(-1) / toks[:, sel].sum(-1))  # (runs, resamples)
        return (xc[:, None] * (ppl - ppl.mean(0))).sum(0) / (xc ** 2).sum()
    n = nats.shape[1]
    boot = slope(_rng(seed).integers(0, n, (n_boot, n)))
    point = float(slope(np.arange(n)[None, :])[0])
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    ppl = np.exp(nats.sum(-1) / toks.sum(-1))
    r2 = float(np.corrcoef(x, ppl)[0, 1] ** 2)
    return {"slope": point, "low": float(lo), "high": float(hi), "r2": r2, "n": len(sizes), "samples": int(n),
            "p_value": float((boot >= 0).mean())}
