"""Sources -> normalized, filtered, scrubbed records with their held-out side, counting everything skipped."""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .hygiene import RecordFilter, detect_language, language_code, scrub
from .readers import is_chatterbot_path, peek, read_rows
from .records import Conversation, DataStats, Document, Skip
from .sources import adapt, count_placeholders, detect_format
from .splits import is_heldout, is_validation, split_key

if TYPE_CHECKING:
    from ..config import DataConfig


def source_name(path: str) -> str:
    """A short name for a source: `chatterbot`, a file's stem, or the dataset id."""
    if path in ("chatterbot", "python-docstrings"):
        return path
    p = Path(path)
    if p.exists():
        name = p.name
        for suffix in (".gz", ".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".yml", ".yaml"):
            name = name.removesuffix(suffix)
        return name or p.name
    return path


@dataclass
class Keyed:
    record: Conversation | Document
    heldout: bool


class RecordSteps:
    """The steps every record takes once, whatever its source (a file, a dataset, the conversation store): the
    length cap, its language (detected from its user text where the source gives none, if asked), the
    filters (language, moderation, length, dedup: one RecordFilter, so dedup spans every source it sees), the
    source's placeholders counted, the scrubber. A record that fails a step raises Skip with the reason."""

    def __init__(self, data_cfg: DataConfig, stats: DataStats, detect_missing_language: bool = False):
        self.max_chars, self.do_scrub, self.stats = data_cfg.max_message_chars, data_cfg.scrub, stats
        self.filter = RecordFilter(data_cfg)
        self.detect = detect_missing_language

    def too_long(self, rec: Conversation | Document) -> bool:
        """Checked before anything costly: a 50 MB line would take minutes to tokenize."""
        texts = [rec.text] if isinstance(rec, Document) else [m.content for m in rec.messages]
        return max(map(len, texts), default=0) > self.max_chars

    def __call__(self, rec: Conversation | Document) -> Conversation | Document:
        if self.too_long(rec):
            raise Skip("message_too_long")
        if rec.language is None and self.detect and isinstance(rec, Conversation):
            rec.language = detect_language(" ".join(m.content for m in rec.messages if m.role == "user"))
        self.filter.check(rec)
        for text in [rec.text] if isinstance(rec, Document) else [m.content for m in rec.messages]:
            count_placeholders(text, self.stats.placeholders)
        if self.do_scrub:
            scrub(rec, self.stats.scrubbed)
        return rec


def read_source(src, stats: DataStats, steps: RecordSteps | None = None) -> Iterator[Conversation | Document]:
    """Records of one SourceConfig, in source order, through `steps` (none: as the adapter gives them). Skips are
    counted in `stats`, never raised. Records in convlearn's own format went through the steps when they were
    written (a learning round's data): they are taken as they are, never filtered or scrubbed twice."""
    rows = read_rows(src.path, src.split, src.subset, src.limit)
    fmt = src.format
    if fmt == "auto":
        if is_chatterbot_path(src.path):
            fmt = "chatterbot"
        else:
            head, rows = peek(rows)
            fmt = detect_format(head)
    stats.format = fmt if not stats.format or stats.format == fmt else "mixed"
    name = source_name(src.path)
    if fmt == "convlearn":
        steps = None

    def counted(it):
        for row in it:
            stats.rows += 1
            yield row

    for item in adapt(fmt, counted(rows), name, stats.edits, src.oasst_best_path_only):
        if isinstance(item, Skip):
            stats.skip(item.reason)
            continue
        if src.domain:
            item.domain = src.domain
        elif item.domain is None:
            item.domain = name
            item.meta["untopical"] = True  # the topic labeler may name its domain
        item.language = language_code(item.language)
        if steps is not None:
            try:
                item = steps(item)
            except Skip as s:
                stats.skip(s.reason)
                continue
        yield item


def iter_records(data_cfg: DataConfig, stats: DataStats) -> Iterator[Keyed]:
    """All sources of a DataConfig, filtered (dedup across sources), each record with its held-out side.
    Stops once `max_conversations` training records were kept (held-out ones do not count) and, where
    `heldout_conversations` is set, the held-out side holds that many: past the cap only held-out records are
    kept, so the held-out set does not depend on the cap."""
    steps = RecordSteps(data_cfg, stats)
    validation = data_cfg.evaluate_on == "validation"
    cap, held_target = data_cfg.max_conversations, None if validation else data_cfg.heldout_conversations
    kept_train = kept_held = 0
    for src in data_cfg.sources:
        for rec in read_source(src, stats, steps):
            key = split_key(rec)
            heldout = is_heldout(key, data_cfg.heldout_fraction)
            if validation:  # the test side stays unread; the held-out side is a slice of the training side
                if heldout:
                    continue
                heldout = is_validation(key, data_cfg.validation_fraction)
            capped = cap is not None and kept_train >= cap
            if capped and (held_target is None or kept_held >= held_target):
                return
            if heldout and held_target is not None and kept_held >= held_target:
                continue
            if not heldout and capped:
                continue
            stats.keep(rec)
            if heldout:
                stats.heldout += 1
                kept_held += 1
            else:
                kept_train += 1
            yield Keyed(rec, heldout)


def prefetch_batches(items: Iterable, batch_size: int, depth: int = 4) -> Iterator[list]:
    """Batches of `items`, produced by a background thread while the caller works on the previous batch.

    Reading and normalizing is Python work; tokenizing is Rust work that releases the GIL. Overlapping the two
    is what lets both cores work. An exception in the reader is re-raised here, in the caller's thread.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            batch = []
            for item in items:
                if stop.is_set():
                    return
                batch.append(item)
                if len(batch) >= batch_size:
                    q.put(batch)
                    batch = []
            if batch:
                q.put(batch)
            q.put(done)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)

    thread = threading.Thread(target=produce, name="convlearn-reader", daemon=True)
    thread.start()
    try:
        while True:
            got = q.get()
            if got is done:
                return
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)
