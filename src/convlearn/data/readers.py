"""Raw rows from local files (.json, .jsonl, .parquet, .csv, each optionally .gz; chatterbot YAML) or from a
Hugging Face dataset (hub id or local dataset folder, streamed through `datasets`).

A reader yields plain dicts, or a `Skip` for a row it could not parse: a bad line never stops the read and
never takes a good one with it. A file that cannot be opened at all is a `UserError` (exit 2).

Files as they come from the internet: the encoding is detected (UTF-8 with or without a BOM, UTF-16/32 with a
BOM or by their zero bytes); a JSON array is streamed element by element (ijson: memory does not grow with the
file), and a download cut short keeps every complete record and counts the cut tail as one `truncated` skip,
as does a cut .gz; a CSV quote left open is a counted skip, after which reading resumes at the next line; a
record nested deeper than MAX_DEPTH levels is a `too_deep` skip.
"""
from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import zlib
from collections import deque
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import ijson
import pyarrow.parquet as pq
import yaml

from ..errors import UserError
from .builtin import chatterbot_dir, stdlib_docstrings
from .records import Skip

Row = dict | Skip
_FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".yml", ".yaml")
MAX_DEPTH = 64  # nesting levels a record may have (the formats need 4); deeper is a `too_deep` skip
_CUT = (EOFError, zlib.error, gzip.BadGzipFile)  # what reading a cut or damaged .gz raises


def _cut(path: Path, e: Exception, rows: int) -> Skip:
    """A .gz that ends early (or turns to garbage) after `rows` rows: the rows read are kept and the cut counted;
    one that is not readable from the start is an error."""
    if rows == 0:
        raise UserError(f"{path}: cannot read ({e})") from None
    return Skip("truncated", f"compressed file cut short or damaged after {rows} rows ({e.__class__.__name__})")


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


# -- bytes, encodings -------------------------------------------------------------------------------------
def _open_binary(path: Path) -> io.BufferedIOBase:
    try:
        raw = open(path, "rb")
    except OSError as e:
        raise UserError(f"{path}: cannot open ({e.strerror or e})") from None
    if path.name.lower().endswith(".gz"):
        return io.BufferedReader(gzip.GzipFile(fileobj=raw))  # type: ignore[arg-type]
    return raw


def detect_encoding(head: bytes) -> str:
    """The text encoding of a file from its first bytes: a BOM, else the zero bytes UTF-16/32 put around ASCII,
    else UTF-8."""
    for bom, enc in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
                     (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if head.startswith(bom):
            return enc
    sample = head[:512]
    if len(sample) >= 4:
        if sample[1::2].count(0) > len(sample) // 4 and sample[0::2].count(0) == 0:
            return "utf-16-le"
        if sample[0::2].count(0) > len(sample) // 4 and sample[1::2].count(0) == 0:
            return "utf-16-be"
    return "utf-8"


def _head(path: Path, n: int = 4096) -> bytes:
    """The first bytes of a file's content (decompressed for .gz, as far as a cut file allows)."""
    with open(path, "rb") as fh:
        raw = fh.read(1 << 16)
    if not path.name.lower().endswith(".gz"):
        return raw[:n]
    try:
        return zlib.decompressobj(31).decompress(raw, n)  # no error for a stream that just stops
    except zlib.error as e:
        raise UserError(f"{path}: cannot read (not gzip data: {e})") from None


def _open_text(path: Path) -> io.TextIOBase:
    """The file as text in its detected encoding (undecodable bytes become U+FFFD)."""
    encoding = detect_encoding(_head(path))
    return io.TextIOWrapper(_open_binary(path), encoding=encoding, errors="replace", newline=None)


class _Utf8(io.RawIOBase):
    """A text stream re-encoded as UTF-8 bytes (what ijson reads)."""

    def __init__(self, text: io.TextIOBase):
        self.text, self.pending = text, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while len(self.pending) < len(buf):
            chunk = self.text.read(1 << 16)
            if not chunk:
                break
            self.pending += chunk.encode("utf-8", "surrogatepass")
        n = min(len(buf), len(self.pending))
        buf[:n], self.pending = self.pending[:n], self.pending[n:]
        return n


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Is `value` nested more than `limit` levels (an iterative walk: no recursion to run out of)?"""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    return False


def _checked(row: Any) -> Row:
    return Skip("too_deep", f"nested deeper than {MAX_DEPTH} levels") if too_deep(row) else row


# -- JSON lines and JSON ----------------------------------------------------------------------------------
def _jsonl_rows(path: Path) -> Iterator[Row]:
    got = 0
    with _open_text(path) as fh:
        try:
            for line in fh:
                if not line.strip():
                    continue
                got += 1
                try:
                    yield _checked(json.loads(line))
                except json.JSONDecodeError as e:
                    yield Skip("invalid_json", f"{e.msg} at column {e.colno}")
                except RecursionError:
                    yield Skip("too_deep", "nested deeper than Python's JSON parser goes")
        except _CUT as e:
            yield _cut(path, e, got)
        except OSError as e:
            raise UserError(f"{path}: cannot read ({e})") from None


def _json_rows(path: Path) -> Iterator[Row]:
    """A JSON array (streamed), an object holding one (`{"data": [...]}`), one object, or JSON lines saved
    as .json (told apart by whether the first line is a whole object)."""
    fh = _open_text(path)
    try:
        first_line = fh.readline(1 << 20)  # bounded: a one-line array of gigabytes is streamed, not read here
    except _CUT as e:
        fh.close()
        yield _cut(path, e, 0)
        return
    start = first_line.lstrip()[:1]
    if start == "{":
        try:
            json.loads(first_line)
            jsonl = True
        except (json.JSONDecodeError, RecursionError):
            jsonl = False
        if jsonl:  # JSON lines: one bad line costs one row
            fh.close()
            yield from _jsonl_rows(path)
            return
    fh.close()
    if start not in ("[", "{", ""):
        yield from _jsonl_rows(path)  # not JSON at all: every line is counted as invalid
        return
    yield from _streamed_json(path)


def _streamed_json(path: Path) -> Iterator[Row]:
    stream = io.BufferedReader(_Utf8(_open_text(path)), 1 << 16)
    prefix = _array_prefix(path)
    if prefix is None:  # one object that holds no list: it is the record
        prefix = ""
    got = 0
    try:
        for item in ijson.items(stream, prefix, use_float=True):
            got += 1
            yield _checked(item)
    except ijson.IncompleteJSONError as e:
        if "premature EOF" in str(e) or "incomplete" in str(e).lower():
            yield Skip("truncated", f"the JSON ends inside record {got + 1} (download cut short?)")
        else:
            yield Skip("invalid_json", f"after {got} records: {str(e).splitlines()[0]}")
    except ijson.JSONError as e:
        yield Skip("invalid_json", f"after {got} records: {str(e).splitlines()[0]}")
    except _CUT as e:
        yield _cut(path, e, got)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    finally:
        stream.close()


def _array_prefix(path: Path) -> str | None:
    """Where the records are: `item` (a top-level array), `<key>.item` (an object whose first value is the
    array: the `{"data": [...]}` wrapper), or None (one plain object)."""
    stream = io.BufferedReader(_Utf8(_open_text(path)), 1 << 16)
    try:
        events = ijson.parse(stream)
        _, event, _ = next(events)
        if event == "start_array":
            return "item"
        if event != "start_map":
            return None
        _, event, key = next(events)
        if event != "map_key":
            return None
        _, event, _ = next(events)
        return f"{key}.item" if event == "start_array" else None
    except (StopIteration, ijson.JSONError, *_CUT):
        return "item"
    finally:
        stream.close()


# -- parquet, CSV, YAML, datasets -------------------------------------------------------------------------
def _parquet_rows(path: Path) -> Iterator[Row]:
    try:
        src = io.BytesIO(gzip.open(path, "rb").read()) if path.name.lower().endswith(".gz") else str(path)
        pf = pq.ParquetFile(src)
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise UserError(f"{path}: not a readable parquet file ({e.__class__.__name__})") from None
    for batch in pf.iter_batches(batch_size=2048):
        yield from batch.to_pylist()


class _Lines:
    """The lines of a text file for csv.reader, remembering the ones of the record being read, so that a broken
    record can be given back (all but its first line) and read again."""

    def __init__(self, fh):
        self.fh, self.back, self.taken = fh, deque(), []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.back.popleft() if self.back else next(self.fh)
        self.taken.append(line)
        return line

    def give_back_all_but_first(self) -> int:
        rest = self.taken[1:]
        self.back.extendleft(reversed(rest))
        self.taken = []
        return len(rest)


def _csv_rows(path: Path) -> Iterator[Row]:
    csv.field_size_limit(1 << 30)
    with _open_text(path) as fh:
        lines = _Lines(fh)
        try:
            header = next(csv.reader(lines))
        except StopIteration:
            return
        except _CUT as e:
            yield _cut(path, e, 0)
            return
        got = 0
        while True:
            reader = csv.reader(lines, strict=True)
            try:
                lines.taken = []
                for cells in reader:
                    lines.taken = []
                    if len(cells) > len(header):
                        yield Skip("wrong_type", "CSV row has more cells than the header")
                        continue
                    cells += [""] * (len(header) - len(cells))
                    got += 1
                    yield {k: _csv_value(v) for k, v in zip(header, cells)}
                return
            except csv.Error as e:  # a quote left open swallows the lines after it: count it, read on after it
                again = lines.give_back_all_but_first()
                yield Skip("csv_quote", f"{e} (the record's next {again} lines are read again)")
            except _CUT as e:
                yield _cut(path, e, got)
                return


def _csv_value(v: str | None) -> Any:
    """CSV cells are strings: nested fields arrive JSON-encoded, missing ones as ''."""
    if v is None or v == "":
        return None
    s = v.lstrip()
    if s[:1] in "[{":
        try:
            return json.loads(v)
        except (json.JSONDecodeError, RecursionError):
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
    import itertools
    head = list(islice(rows, n))
    return head, itertools.chain(head, rows)
