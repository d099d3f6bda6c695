"""Verdicts against the research plan's success criteria, each with the figure and the interval (or p-value)
behind it. A verdict can fail, and it says `inconclusive` when its interval straddles the bar, `not measurable`
when the evidence cannot decide at all (a retention benchmark at chance), `not measured` when a figure is absent.

The thresholds come from the runs' `eval.criteria`; intervals and tests from eval/stats.py. Pooled
points (several seeds): the mean of the runs' figures with a t interval across seeds; a single run: its own
bootstrap interval over held-out samples / questions / steps.
"""
from __future__ import annotations

import math
import statistics

from scipy import stats as scipy_stats

from ..eval import stats

CRITERIA = ("conversation_ppl", "retention", "memory", "speed")


def criteria_labels(c) -> dict[str, str]:
    return {"conversation_ppl": f"held-out conversation perplexity (assistant tokens) down >= "
                                f"{-100 * c.conversation_ppl_change:g}% from step 0",
            "retention": f"{c.retention_benchmark} within {c.retention_points:g} points of step 0",
            "memory": f"peak memory < {100 * c.memory_ratio:g}% of AdamW's",
            "speed": f"throughput > {100 * c.speed_ratio:g}% of AdamW's"}


def verdict(state: str, figure: str, interval: tuple[float, float] | None = None,
            p_value: float | None = None) -> dict:
    return {"verdict": state, "figure": figure, "interval": list(interval) if interval else None,
            "p_value": p_value}


def against_bar(estimate: float, low: float, high: float, bar: float, below: bool) -> str:
    """pass when the whole interval is on the right side of the bar, fail when it is wholly on the wrong side,
    inconclusive when it straddles. `below`: the figure must be below the bar."""
    good_low, good_high = (high < bar, low < bar) if below else (low > bar, high > bar)
    return "pass" if good_low else ("fail" if not good_high else "inconclusive")


def pooled(runs: list[dict], key: str, low_key: str | None = None, high_key: str | None = None,
           confidence: float = 0.95) -> tuple[float, float, float, int] | None:
    """(estimate, low, high, n): one run's figure and its own interval, or the mean of several with a t
    interval across them. None when a single run's interval is asked for and absent (e.g. no per-question
    results to pair): [v, v] would read as certainty, so the figure is not measured."""
    vals = [(r[key], r.get(low_key), r.get(high_key)) for r in runs if isinstance(r.get(key), (int, float))
            and math.isfinite(r[key])]
    if not vals:
        return None
    if len(vals) == 1:
        v, lo, hi = vals[0]
        if low_key is not None and (lo is None or hi is None):
            return None
        return (v, lo if lo is not None else v, hi if hi is not None else v, 1)
    xs = [v for v, _, _ in vals]
    mean, sd = statistics.fmean(xs), statistics.stdev(xs)
    half = scipy_stats.t.ppf((1 + confidence) / 2, len(xs) - 1) * sd / math.sqrt(len(xs))
    return (mean, mean - half, mean + half, len(xs))


def _fmt(x: float, pct: bool = False) -> str:
    return f"{100 * x:+.1f}%" if pct else f"{x:.3g}"


def _interval(p, pct: bool = False) -> str:
    if p is None:
        return "not measured (no interval)"
    est, lo, hi, n = p
    seeds = f", {n} seeds" if n > 1 else ""
    return f"{_fmt(est, pct)} [{_fmt(lo, pct)}, {_fmt(hi, pct)}{seeds}]"


def is_reference(run: dict, role: str) -> bool:
    """Whether a run is a baseline of `role` (its method's `Method.reference`: "full" = full fine-tuning,
    "adapter" = the low-memory adapter). Layer-wise updates are not the baseline a user would run."""
    return run.get("reference") == role and not run.get("layerwise")


def success_criteria(runs: list[dict], c) -> dict[str, dict]:
    """Per point (seeds pooled), the four success criteria. The full fine-tuning baseline's runs (AdamW) are the
    memory / speed reference."""
    adamw = [r for r in runs if is_reference(r, "full")]
    ref_mem = statistics.fmean(r["peak_memory_bytes"] for r in adamw if r.get("peak_memory_bytes")) \
        if any(r.get("peak_memory_bytes") for r in adamw) else None
    ref_steps = next((r["_steps"] for r in adamw if r.get("_steps")), None)
    for r in runs:
        r["memory_vs_adamw"] = r["peak_memory_bytes"] / ref_mem if ref_mem and r.get("peak_memory_bytes") else None
        speed = stats.throughput_ratio(r["_steps"], ref_steps, c.bootstrap_samples, c.confidence) \
            if ref_steps and r.get("_steps") else None
        r["speed_vs_adamw"], r["speed_vs_adamw_low"], r["speed_vs_adamw_high"] = \
            (speed["ratio"], speed["low"], speed["high"]) if speed else (None, None, None)
    out = {}
    for point in dict.fromkeys(r["point"] for r in runs):
        members = [r for r in runs if r["point"] == point]
        v = {"conversation_ppl": _learning(members, c), "retention": _retention(members, c)}
        unmatched = [r["micro_batch"] for r in adamw if r.get("micro_batch") != members[0].get("micro_batch")]
        if is_reference(members[0], "full"):
            v["memory"] = v["speed"] = verdict("reference", "AdamW is the baseline")
        elif unmatched:  # activations scale with the micro-batch: a different one alone moves both figures
            v["memory"] = v["speed"] = verdict(
                "not comparable", f"micro-batch (sequences, tokens, packed) {members[0].get('micro_batch')} "
                                  f"against AdamW's {unmatched[0]}: compare at matched micro-batches")
        else:
            v["memory"], v["speed"] = _memory(members, c), _speed(members, c)
        out[point] = v
    return out


def _learning(members: list[dict], c) -> dict:
    p = pooled(members, "conversation_ppl_change", "conversation_ppl_change_low", "conversation_ppl_change_high",
               c.confidence)
    if p is None:
        return verdict("not measured", "no step-0 and final conversation perplexity (or no paired interval)")
    state = against_bar(p[0], p[1], p[2], c.conversation_ppl_change, below=True)
    alls = pooled(members, "conversation_ppl_all_change")
    extra = f"; all tokens {_fmt(alls[0], True)}" if alls else ""
    return verdict(state, f"{_interval(p, True)} relative change{extra}", (p[1], p[2]))


def _retention(members: list[dict], c) -> dict:
    name = c.retention_benchmark
    if not any(r.get("retention_delta_points") is not None for r in members):
        return verdict("not measured", f"no {name} at step 0 and at the end")
    unmeasurable = [r for r in members if r.get("retention_measurable") is False]
    if unmeasurable:
        r = unmeasurable[0]
        return verdict("not measurable", f"step 0 at {100 * r['retention_step0']:.1f}% is within noise of chance "
                                         f"({100 * r['retention_chance']:.1f}%, binomial p = "
                                         f"{r['retention_step0_p_vs_chance']:.2g}): no retention to lose",
                       p_value=r["retention_step0_p_vs_chance"])
    p = pooled(members, "retention_delta_points", "retention_delta_low", "retention_delta_high", c.confidence)
    if p is None:
        d = next(r["retention_delta_points"] for r in members if r.get("retention_delta_points") is not None)
        return verdict("not measured", f"{d:+.1f} points, no interval: no per-question results to pair at step 0 "
                                       f"and at the end")
    state = against_bar(p[0], p[1], p[2], -c.retention_points, below=False)
    pv = members[0].get("retention_p_value") if len(members) == 1 else None
    test = f"; McNemar p = {pv:.2g}" if pv is not None else ""
    return verdict(state, f"{_interval(p)} points{test}", (p[1], p[2]), pv)


def _memory(members: list[dict], c) -> dict:
    p = pooled(members, "memory_vs_adamw")
    if p is None:
        return verdict("not measured", "no AdamW run (or no peak memory) to compare with")
    source = members[0].get("peak_memory_source", "")
    state = "pass" if p[0] < c.memory_ratio else "fail"
    return verdict(state, f"{p[0]:.3g} of AdamW's peak ({source}; no sampling noise)")


ONE_RUN = "one run on this machine, not a comparison"


def _speed(members: list[dict], c) -> dict:
    """Runs of a sweep go one after another: load that changes between them is in no interval over one run's
    steps (a rerun flipped GaLore's verdict from pass to fail). So the figure is shown, labelled, and judged
    nowhere; benchmarks/speed.py measures the comparison in interleaved rounds."""
    p = pooled(members, "speed_vs_adamw", "speed_vs_adamw_low", "speed_vs_adamw_high", c.confidence)
    if p is None:
        return verdict("not measured", "no AdamW run to compare with")
    return verdict(ONE_RUN, f"{_interval(p)} of AdamW's tokens per training second (an interval over steps of "
                            f"one run each, run one after another; the comparison: benchmarks/speed.py, "
                            f"interleaved)", (p[1], p[2]))


# -- each experiment's hypothesis ------------------------------------------------------------------------
def optimizers_hypothesis(runs: list[dict], c) -> dict:
    """GaLore learns like AdamW (its perplexity gain, paired on the same held-out samples, is at least a share of
    AdamW's) with LoRA-like memory (peak memory at most a multiple of LoRA's). The references are the runs whose
    method is the full / adapter baseline; every point of a method that is neither is judged."""
    adamw = next((r for r in runs if is_reference(r, "full")), None)
    lora = next((r for r in runs if is_reference(r, "adapter")), None)
    rows = {}
    for point in dict.fromkeys(r["point"] for r in runs if r.get("reference") is None):
        r = next(x for x in runs if x["point"] == point)
        if adamw is None or lora is None or "_conversation_ppl_samples" not in r \
                or "_conversation_ppl_samples" not in adamw:
            rows[point] = verdict("not measured", "needs adamw, lora and galore runs with held-out samples")
            continue
        ratio = stats.gain_ratio(r["_conversation_ppl_samples"], adamw["_conversation_ppl_samples"],
                                 "assistant", c.bootstrap_samples, c.confidence)
        mem = r["peak_memory_bytes"] / lora["peak_memory_bytes"] if r.get("peak_memory_bytes") and \
            lora.get("peak_memory_bytes") else None
        if ratio is None or mem is None:
            rows[point] = verdict("not measured", "no paired held-out samples or no peak memory")
            continue
        if ratio["a_high"] >= 0 or ratio["b_high"] >= 0:
            # a ratio of gains needs two gains: both perplexities significantly down (interval below 0)
            worse = ratio["a_low"] > 0 or ratio["b_low"] > 0
            rows[point] = verdict("fail" if worse else "inconclusive",
                                  f"perplexity change {100 * ratio['a_change']:+.1f}% [{100 * ratio['a_low']:+.1f}%, "
                                  f"{100 * ratio['a_high']:+.1f}%], AdamW's {100 * ratio['b_change']:+.1f}% "
                                  f"[{100 * ratio['b_low']:+.1f}%, {100 * ratio['b_high']:+.1f}%]: not both "
                                  "significant gains, so no gain ratio")
            continue
        learn = against_bar(ratio["ratio"], ratio["low"], ratio["high"], c.learning_vs_adamw, below=False)
        state = "fail" if learn == "fail" or mem > c.memory_vs_lora else learn
        rows[point] = verdict(state, f"perplexity gain {ratio['ratio']:.2f}x AdamW's [{ratio['low']:.2f}, "
                                     f"{ratio['high']:.2f}], peak memory {mem:.2f}x LoRA's",
                              (ratio["low"], ratio["high"]))
    return {"statement": f"GaLore learns like AdamW (>= {c.learning_vs_adamw:g}x its perplexity gain) with "
                         f"LoRA-like memory (<= {c.memory_vs_lora:g}x LoRA's peak memory)", "verdicts": rows}


def data_scaling_hypothesis(runs: list[dict], c) -> dict:
    pts = [(r["conversations"], r["conversation_ppl_final"]) for r in runs
           if r.get("conversations") and r.get("conversation_ppl_final")]
    statement = (f"perplexity falls log-linearly in data size (slope < 0 with {100 * c.confidence:g}% confidence, "
                 f"R² >= {c.scaling_r2:g}); retention within {c.retention_points:g} points at every size")
    if len(pts) < 3:
        return {"statement": statement,
                "verdicts": {"log_linear": verdict("not measured", "needs >= 3 data sizes with final perplexity")}}
    sized = [r for r in runs if r.get("conversations") and r.get("_conversation_ppl_samples")]
    fit = stats.scaling_slope([float(r["conversations"]) for r in sized],
                              [r["_conversation_ppl_samples"][1] for r in sized], "assistant", c.bootstrap_samples,
                              c.confidence) if len(sized) == len(pts) else None
    source = (f"bootstrap over the {fit['samples']} held-out conversations every size is scored on (evaluation "
              f"noise; one seed per size)") if fit else None
    if fit is None:  # no shared per-sample losses: the t interval of the fit over the sizes themselves
        fit = stats.slope_interval([float(x) for x, _ in pts], [y for _, y in pts], c.confidence)
        source = f"t interval of the fit over {fit['n']} sizes"
    slope = against_bar(fit["slope"], fit["low"], fit["high"], 0.0, below=True)
    state = "fail" if slope == "fail" or fit["r2"] < c.scaling_r2 else slope
    retention = [_retention([r], c)["verdict"] for r in runs]
    bounded = "fail" if "fail" in retention else "pass" if retention and all(v == "pass" for v in retention) \
        else "inconclusive" if "inconclusive" in retention else (retention[0] if retention else "not measured")
    return {"statement": statement, "fit": fit,
            "verdicts": {"log_linear": verdict(state, f"slope {fit['slope']:.3g} [{fit['low']:.3g}, "
                                                      f"{fit['high']:.3g}] per ln(conversation), R² "
                                                      f"{fit['r2']:.2f}, n={fit['n']} ({source})",
                                               (fit["low"], fit["high"]),
                                               fit["p_value"]),
                         "bounded_forgetting": verdict(bounded, "per size: " + ", ".join(retention))}}


PHASE_FACTOR = 3


def online_hypothesis(runs: list[dict], c) -> dict:
    level = f"steps_to_{round(100 * c.adaptation_level)}"
    every = [s for r in runs for s in (r.get("adaptation") or {}).get("switches", [])]
    # "adapted within N steps" says something only where a phase runs well past N: in a phase of 1,250 steps,
    # "<= 1,000" is nearly automatic. Phases shorter than PHASE_FACTOR x N are not judged (and counted as such).
    switches = [s for s in every if s.get("phase_end") is None
                or s["phase_end"] - s["step"] + 1 >= PHASE_FACTOR * c.adaptation_steps]
    short = len(every) - len(switches)
    adapted = [s for s in switches if s.get("adapted")]
    steps = [s[level] for s in adapted if s.get(level) is not None]
    statement = (f"adapts to a new topic within ~{c.adaptation_steps} steps: a majority of topic switches show an "
                 f"improvement beyond evaluation noise and a no-training control, and their median steps to "
                 f"{100 * c.adaptation_level:g}% of it is <= {c.adaptation_steps}")
    if not switches:
        return {"statement": statement, "verdicts": {"adaptation": verdict(
            "not measured", f"no topic switch with a phase of >= {PHASE_FACTOR} x {c.adaptation_steps} steps"
                            + (f" ({short} shorter)" if short else ""))}}
    # a binomial interval for the share of topics that adapted: a majority holds only on its low end
    share = scipy_stats.binomtest(len(adapted), len(switches)).proportion_ci(c.confidence)
    fast = bool(steps) and statistics.median(steps) <= c.adaptation_steps
    state = "pass" if share.low > 0.5 and fast else "fail" if share.high < 0.5 or (steps and not fast) \
        else "inconclusive"
    figure = (f"{len(adapted)} of {len(switches)} switches adapted (share [{share.low:.2f}, {share.high:.2f}])"
              + (f", median {statistics.median(steps):.0f} steps to {100 * c.adaptation_level:g}%" if steps else
                 "; none beyond noise and control: not adapted")
              + (f"; {short} switches with phases under {PHASE_FACTOR} x {c.adaptation_steps} steps not judged"
                 if short else ""))
    return {"statement": statement,
            "verdicts": {"adaptation": verdict(state, figure, (share.low, share.high))}}


def replay_hypothesis(runs: list[dict], c) -> dict:
    """10% replay reduces forgetting (the original-distribution perplexity increase): Welch's t-test over seeds,
    or with one seed per arm a paired bootstrap over the original-text documents (evaluation noise only)."""
    statement = (f"10% replay significantly reduces forgetting (original-distribution perplexity increase), at "
                 f"{100 * (1 - c.confidence):g}% significance")
    # the two arms differ in the replay ratio only: the same method, rate and data (seeds vary within an arm)
    def setting(r):
        return (r.get("method_label"), r.get("lr"), r.get("conversations"), tuple(r.get("micro_batch") or ()))
    arms = {ratio: [r for r in runs if r.get("replay_ratio") == ratio and r.get("original_ppl_change") is not None]
            for ratio in (0.0, 0.1)}
    settings = {setting(r) for arm in arms.values() for r in arm}
    if len(settings) > 1:
        return {"statement": statement, "verdicts": {"replay_10": verdict(
            "not measured", f"the arms differ in more than the replay ratio ({len(settings)} settings of method, "
                            f"rate, data and micro-batch): nothing to pair")}}
    if not arms[0.0] or not arms[0.1]:
        return {"statement": statement, "verdicts": {
            "replay_10": verdict("not measured", "needs replay 0% and 10% runs with original perplexity")}}
    a, b = ([r["original_ppl_change"] for r in arms[x]] for x in (0.0, 0.1))
    # Replay can only reduce forgetting that happened: when the arm without replay did not get significantly
    # worse on the original distribution, "replay reduced it" would be read off a change that is not forgetting.
    forgot = pooled(arms[0.0], "original_ppl_change", "original_ppl_change_low", "original_ppl_change_high",
                    c.confidence)
    if forgot is not None and forgot[1] <= 0:
        return {"statement": statement, "verdicts": {"replay_10": verdict(
            "inconclusive", f"the run without replay did not significantly forget: its original-distribution "
                            f"perplexity changed {_interval(forgot, True)}, an interval not above zero, so there is "
                            f"no forgetting for replay to reduce (a longer run or a higher rate is needed)",
            forgot[1:3])}}
    per_point = {p: _interval(pooled([r for r in runs if r["point"] == p], "original_ppl_change",
                                     "original_ppl_change_low", "original_ppl_change_high", c.confidence), True)
                 for p in dict.fromkeys(r["point"] for r in runs if r.get("original_ppl_change") is not None)}
    test = stats.welch(a, b, c.confidence)
    if test is not None:
        p_one = test["p_value"] / 2 if test["difference"] > 0 else 1 - test["p_value"] / 2
        state = "pass" if p_one < 1 - c.confidence else "fail"
        figure = (f"increase {statistics.fmean(a):+.3f} without replay vs {statistics.fmean(b):+.3f} with 10%: "
                  f"reduction {test['difference']:.3f} [{test['low']:.3f}, {test['high']:.3f}], Welch one-sided "
                  f"p = {p_one:.2g} over {test['n'][0]} + {test['n'][1]} seeds")
        return {"statement": statement, "per_point": per_point,
                "verdicts": {"replay_10": verdict(state, figure, (test["low"], test["high"]), p_one)}}
    diff = stats.paired_change_difference(arms[0.0][0].get("_original_ppl_samples"),
                                          arms[0.1][0].get("_original_ppl_samples"), c.bootstrap_samples,
                                          c.confidence)
    if diff is None:
        return {"statement": statement, "per_point": per_point, "verdicts": {
            "replay_10": verdict("not measured", "one seed per arm and no per-document losses to pair")}}
    state = "pass" if diff["low"] > 0 else "fail"
    figure = (f"increase {a[0]:+.3f} without replay vs {b[0]:+.3f} with 10%: reduction {diff['difference']:.3f} "
              f"[{diff['low']:.3f}, {diff['high']:.3f}] (one seed per arm: a paired bootstrap over the "
              f"{diff['samples']} evaluated documents, evaluation noise only; run seeds for the t-test)")
    return {"statement": statement, "per_point": per_point,
            "verdicts": {"replay_10": verdict(state, figure, (diff["low"], diff["high"]))}}
