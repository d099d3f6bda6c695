"""`data inspect`: read one file or dataset with the normalization rules and report what was kept and skipped."""
from __future__ import annotations

from ..config import DataConfig, SourceConfig
from .records import DataStats
from .stream import iter_records


def inspect_source(path: str, fmt: str = "auto", limit: int | None = None, split: str = "train",
                   heldout_fraction: float = 0.02) -> DataStats:
    """Statistics of one source read with the default filters (dedup, scrub, moderation)."""
    cfg = DataConfig(sources=[SourceConfig(path=path, format=fmt, limit=limit, split=split)],
                     heldout_fraction=heldout_fraction)
    stats = DataStats()
    for _ in iter_records(cfg, stats):
        pass
    return stats


def _top(counter: dict, n: int = 12) -> str:
    items = list(counter.items())
    shown = ", ".join(f"{k} {v:,}" for k, v in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "") if items else "none"


def format_stats(stats: DataStats, path: str) -> str:
    j = stats.to_json()
    skipped = sum(j["skipped"].values())
    lines = [
        f"{path}",
        f"  format:        {j['format']}",
        f"  rows read:     {j['rows']:,}",
        f"  kept:          {j['conversations']:,} conversations, {j['documents']:,} documents "
        f"({j['heldout']:,} held out), {j['messages']:,} messages",
        f"  exchanges per conversation: {_top(j['turns_per_conversation'])}",
        f"  languages:     {_top(j['languages'])}",
        f"  domains:       {_top(j['domains'])}",
        f"  skipped:       {skipped:,}" + (f" ({_top(j['skipped'], 20)})" if skipped else ""),
        f"  edits:         {_top(j['edits'])}",
        f"  scrubbed:      {_top(j['scrubbed'])}",
        f"  placeholders kept: {_top(j['placeholders'])}",
    ]
    return "\n".join(lines)
