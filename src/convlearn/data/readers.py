"""Raw rows from local files (.json, .jsonl, .parquet, .csv, each optionally .gz; chatterbot YAML) or from a
Hugging Face dataset (hub id or local dataset folder, streamed through `datasets`).

A reader yields plain dicts, or a `Skip` for a row it could not parse: a bad line never stops the read and
never takes a good one with it. A file that cannot be opened at all is a `UserError` (exit 2).
"""
from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from ..errors import UserError
from .builtin import chatterbot_dir, stdlib_docstrings
from .records import Skip

Row = dict | Skip
_FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".yml", ".yaml")


def _suffix(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for suf in _FILE_SUFFIXES:
        if name.endswith(suf):
            return suf
    return ""


def is_chatterbot_path(path: str) -> bool:
    p = Path(path)
    if path == "chatterbot":
        return True
    if p.is_file():
        return _suffix(p) in (".yml", ".yaml")
    return p.is_dir() and any(p.glob("*.yml"))


def read_rows(path: str, split: str = "train", subset: str | None = None, limit: int | None = None
              ) -> Iterator[Row]:
    """Every raw row of a source, in file order (at most `limit`, bad rows included in the count)."""
    rows = _rows(path, split, subset)
    return islice(rows, limit) if limit is not None else rows


def _rows(path: str, split: str, subset: str | None) -> Iterator[Row]:
    if path == "python-docstrings":  # the "original distribution" text every machine has
        return iter(stdlib_docstrings())
    if is_chatterbot_path(path):
        return _chatterbot_rows(chatterbot_dir() if path == "chatterbot" else Path(path))
    p = Path(path)
    if p.is_file():
        suffix = _suffix(p)
        if suffix in (".jsonl", ".ndjson"):
            return _jsonl_rows(p)
        if suffix == ".json":
            return _json_rows(p)
        if suffix == ".parquet":
            return _parquet_rows(p)
        if suffix == ".csv":
            return _csv_rows(p)
        raise UserError(f"{p}: unknown file type (expected .json, .jsonl, .parquet, .csv, optionally .gz, "
                        f"or chatterbot .yml)")
    if not p.exists() and p.suffix.lower() in _FILE_SUFFIXES + (".gz",):
        raise UserError(f"{p}: no such file")
    return _dataset_rows(path, split, subset)


def _open_text(path: Path) -> io.TextIOBase:
    try:
        if path.name.lower().endswith(".gz"):
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
        return open(path, encoding="utf-8", errors="replace")
    except OSError as e:
        raise UserError(f"{path}: cannot open ({e.strerror or e})") from None


def _jsonl_rows(path: Path) -> Iterator[Row]:
    with _open_text(path) as fh:
        try:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    yield Skip("invalid_json", f"{e.msg} at column {e.colno}")
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise UserError(f"{path}: cannot read ({e})") from None


def _json_rows(path: Path) -> Iterator[Row]:
    with _open_text(path) as fh:
        try:
            text = fh.read()
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise UserError(f"{path}: cannot read ({e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        # Many ".json" dumps are JSON lines; read them line by line so one bad line costs one row.
        if "\n" in text.strip():
            yield from _jsonl_rows(path)
            return
        raise UserError(f"{path}: not valid JSON") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(data) == 1 and lists else [data]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records")
    yield from data


def _parquet_rows(path: Path) -> Iterator[Row]:
    try:
        src = io.BytesIO(gzip.open(path, "rb").read()) if path.name.lower().endswith(".gz") else str(path)
        pf = pq.ParquetFile(src)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise UserError(f"{path}: not a readable parquet file ({e.__class__.__name__})") from None
    for batch in pf.iter_batches(batch_size=2048):
        yield from batch.to_pylist()


def _csv_rows(path: Path) -> Iterator[Row]:
    csv.field_size_limit(1 << 30)
    with _open_text(path) as fh:
        for row in csv.DictReader(fh):
            if None in row:  # more cells than header columns
                yield Skip("wrong_type", "CSV row has more cells than the header")
                continue
            yield {k: _csv_value(v) for k, v in row.items()}


def _csv_value(v: str | None) -> Any:
    """CSV cells are strings: nested fields arrive JSON-encoded, missing ones as ''."""
    if v is None or v == "":
        return None
    s = v.lstrip()
    if s[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v


def _chatterbot_rows(path: Path) -> Iterator[Row]:
    files = [path] if path.is_file() else sorted(path.glob("*.yml")) + sorted(path.glob("*.yaml"))
    if not files:
        raise UserError(f"{path}: no chatterbot .yml files")
    for f in files:
        try:
            data = yaml.safe_load(f.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            yield Skip("invalid_yaml", f"{f.name}: {e.__class__.__name__}")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("conversations"), list):
            yield Skip("missing_field", f"{f.name}: no conversations list")
            continue
        topic = f.stem.replace("_", " ")
        for i, conv in enumerate(data["conversations"]):
            yield {"topic": topic, "index": i, "conversation": conv, "categories": data.get("categories")}


def _dataset_rows(path: str, split: str, subset: str | None) -> Iterator[Row]:
    """A hub dataset id or a local dataset folder, through `datasets` (streaming, nothing cached whole)."""
    import datasets  # ~1 s to import: only for hub ids and dataset folders
    try:
        ds = datasets.load_dataset(path, name=subset, split=split, streaming=True)
    except Exception as e:  # datasets raises many types: not found, offline, gated, bad config
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise UserError(f"cannot open dataset {path!r} (split {split!r}): {first}") from None
    for row in ds:
        yield dict(row)


def peek(rows: Iterator[Row], n: int = 50) -> tuple[list[Row], Iterator[Row]]:
    """First n rows and an iterator that still yields them."""
    head = list(islice(rows, n))
    return head, itertools.chain(head, rows)
