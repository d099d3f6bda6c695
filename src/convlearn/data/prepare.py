"""`data prepare`: read, normalize, filter, split, render and tokenize a run's data once, cached as Arrow.

The cache key covers everything that changes the tokens: the data section, the sources' file fingerprints,
the tokenizer (its full serialization and chat template) and the rendering settings. A cache directory is
built under a temporary name and renamed into place, so an interrupted prepare never looks finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, fields
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from ..config import RunConfig, dump_config
from ..config.schema import to_dict
from ..errors import UserError
from .records import Conversation, DataStats
from .render import ChatRenderer, Sample, pack
from .stream import iter_records, prefetch_batches
from .topics import TopicLabeler, first_user_turn, labeler_cache_path

# 3: documents start with the tokenizer's BOS. Bump when normalization or rendering changes what a cache holds.
CACHE_VERSION = 3

SAMPLE_SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())), ("token_mask", pa.list_(pa.int8())),
    ("assistant_mask", pa.list_(pa.int8())), ("token_bytes", pa.list_(pa.int32())),
    ("conversation_id", pa.string()), ("source", pa.string()), ("domain", pa.string()),
    ("language", pa.string()), ("window", pa.int32())])
# A packed row keeps what its samples had, per segment; `domain` (its first segment's) lets the stream order and
# group packed rows as it does unpacked ones.
PACKED_SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())), ("token_mask", pa.list_(pa.int8())),
    ("assistant_mask", pa.list_(pa.int8())), ("token_bytes", pa.list_(pa.int32())),
    ("lengths", pa.list_(pa.int32())), ("conversation_ids", pa.list_(pa.string())),
    ("domain", pa.string()), ("domains", pa.list_(pa.string())), ("sources", pa.list_(pa.string())),
    ("languages", pa.list_(pa.string())), ("windows", pa.list_(pa.int32()))])


@dataclass
class PreparedData:
    path: Path
    meta: dict

    def dataset(self, split: str):
        """The `train` or `heldout` samples as a memory-mapped `datasets.Dataset`."""
        import datasets  # ~1 s to import: only when the samples are read
        return datasets.Dataset.from_file(str(self.path / f"{split}.arrow"))

    def heldout_conversations(self) -> list[Conversation]:
        with open(self.path / "heldout_conversations.jsonl", encoding="utf-8") as fh:
            return [Conversation.from_dict(json.loads(line)) for line in fh]


def renderer_for(cfg: RunConfig, tokenizer, spec=None) -> ChatRenderer:
    """The renderer a run config asks for, with the model family's pinned template variables."""
    facts = spec.facts if spec is not None else None
    kwargs = {**(facts.template_kwargs if facts else {}), **cfg.render.template_kwargs}
    return ChatRenderer(tokenizer, cfg.render.max_seq_len, system_role=facts.system_role if facts else None,
                        template_kwargs=kwargs, system_prompt=cfg.render.system_prompt,
                        window_context_fraction=cfg.render.window_context_fraction)


def _source_fingerprint(src) -> dict:
    p = Path(src.path)
    if p.is_file():
        st = p.stat()
        return {"file": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        return {"dir": str(p.resolve()), "files": [(str(f.relative_to(p)), f.stat().st_size,
                                                    f.stat().st_mtime_ns) for f in files]}
    if src.path == "chatterbot":
        return {"chatterbot-corpus": version("chatterbot-corpus")}
    return {"dataset": src.path}


def cache_key(cfg: RunConfig, renderer: ChatRenderer) -> str:
    data = to_dict(cfg.data)
    data.pop("cache_dir")
    tok = renderer.tok
    payload = {
        "version": CACHE_VERSION, "data": data,
        "files": [_source_fingerprint(s) for s in cfg.data.sources],
        "tokenizer": hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest(),
        "template": tok.chat_template, "template_kwargs": renderer.template_kwargs,
        "system_role": renderer.system_role, "max_seq_len": cfg.render.max_seq_len,
        "context": cfg.render.window_context_fraction, "system_prompt": cfg.render.system_prompt,
        "pack": cfg.render.pack,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


class _ArrowWriter:
    def __init__(self, path: Path, schema: pa.Schema, batch: int = 1000):
        self.schema, self.batch, self.rows, self.count = schema, batch, [], 0
        self.writer = pa.ipc.new_stream(str(path), schema)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        columns = []
        for f in self.schema:
            values = [row[f.name] for row in self.rows]
            if pa.types.is_list(f.type) and isinstance(values[0], np.ndarray):
                # numpy columns: one concatenate + offsets, instead of a Python object per token
                offsets = np.zeros(len(values) + 1, dtype=np.int32)
                np.cumsum([len(v) for v in values], out=offsets[1:])
                flat = np.concatenate(values).astype(f.type.value_type.to_pandas_dtype(), copy=False)
                columns.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)))
            else:
                columns.append(pa.array(values, type=f.type))
        self.writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=self.schema))
        self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _row(s: Sample) -> dict:
    return {f.name: getattr(s, f.name) for f in fields(s)}  # no deep copy (dataclasses.asdict copies)


def prepare(cfg: RunConfig, tokenizer, spec=None, *, progress: bool = True, batch_size: int = 512) -> PreparedData:
    """Prepare (or load from cache) the train and held-out samples of a run config."""
    renderer = renderer_for(cfg, tokenizer, spec)
    key = cache_key(cfg, renderer)
    final = Path(cfg.data.cache_dir) / key
    if (final / "meta.json").is_file():
        return _with_loss(PreparedData(final, json.loads((final / "meta.json").read_text())), cfg)
    _remove_stale_temps(final.parent)
    tmp = final.with_name(f".{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.perf_counter()
    topics = _Topics(cfg) if cfg.data.topics.k > 0 else None
    stats = DataStats()
    pack_rows = cfg.render.pack
    train = _ArrowWriter(tmp / "train.arrow", PACKED_SCHEMA if pack_rows else SAMPLE_SCHEMA)
    heldout = _ArrowWriter(tmp / "heldout.arrow", SAMPLE_SCHEMA)
    pending: list[Sample] = []
    counts: Counter = Counter()  # loss tokens per split under each mask
    with open(tmp / "heldout_conversations.jsonl", "w", encoding="utf-8") as held_fh, \
            tqdm(desc="prepare", unit=" rec", disable=not progress, mininterval=1.0) as bar:

        def emit(batch) -> None:
            if topics is not None:
                topics.assign([k.record for k in batch])
            convs = [k.record for k in batch if isinstance(k.record, Conversation)]
            docs = [k.record for k in batch if not isinstance(k.record, Conversation)]
            out = dict(zip((id(c) for c in convs), renderer.render_many(convs)))
            out.update(zip((id(d) for d in docs), renderer.render_documents(docs)))
            for k in batch:
                for s in out[id(k.record)]:
                    counts["heldout" if k.heldout else "train"] += int(s.token_mask.sum())
                    counts[("heldout" if k.heldout else "train") + "_assistant"] += int(s.assistant_mask.sum())
                    if k.heldout:
                        heldout.add(_row(s))
                    elif pack_rows:
                        pending.append(s)
                    else:
                        train.add(_row(s))
                if k.heldout and isinstance(k.record, Conversation):
                    held_fh.write(json.dumps(k.record.to_dict(), ensure_ascii=False) + "\n")
            if pack_rows and len(pending) > 4 * batch_size:
                rows = pack(pending, cfg.render.max_seq_len)
                for row in rows[:-1]:  # the last row may still fill up
                    train.add(row)
                pending[:] = pending[len(pending) - len(rows[-1]["lengths"]):]
            bar.update(len(batch))
            bar.set_postfix(kept=stats.conversations + stats.documents, skipped=sum(stats.skipped.values()))

        for batch in prefetch_batches(iter_records(cfg.data, stats), batch_size):
            emit(batch)
        for row in pack(pending, cfg.render.max_seq_len) if pack_rows else []:
            train.add(row)
    train.close()
    heldout.close()
    meta = {"key": key, "data": stats.to_json(), "render": renderer.stats.to_json(),
            "train_rows": train.count, "heldout_rows": heldout.count, "packed": pack_rows,
            "train_all_tokens": counts["train"], "train_assistant_tokens": counts["train_assistant"],
            "heldout_all_tokens": counts["heldout"], "heldout_assistant_tokens": counts["heldout_assistant"],
            "seconds": round(time.perf_counter() - started, 3), "model": cfg.model.name}
    if topics is not None:
        topics.save()
        meta["topics"] = {"k": len(topics.labeler.names), "names": topics.labeler.names}
    (tmp / "config.yaml").write_text(dump_config(cfg))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    if final.exists():  # another process finished the same key first; theirs is as good as ours
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, final)
    return _with_loss(PreparedData(final, meta), cfg)


def _remove_stale_temps(cache_dir: Path) -> None:
    """A prepare killed mid-way leaves `.<key>.tmp-<pid>`: remove those whose process is gone."""
    for tmp in cache_dir.glob(".*.tmp-*") if cache_dir.is_dir() else []:
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:  # alive, another user's
            continue


def _with_loss(prepared: PreparedData, cfg: RunConfig) -> PreparedData:
    """The cache serves both loss modes; the figures of the configured one are added on the way out."""
    mask = "all" if cfg.render.loss == "all" else "assistant"
    prepared.meta = {**prepared.meta, "loss": cfg.render.loss,
                     "train_loss_tokens": prepared.meta[f"train_{mask}_tokens"],
                     "heldout_loss_tokens": prepared.meta[f"heldout_{mask}_tokens"]}
    return prepared


class _Topics:
    """The fitted topic labeler of a data config (cached), and labels cached by conversation id."""

    def __init__(self, cfg: RunConfig):
        t = cfg.data.topics
        material = {"sources": [_source_fingerprint(s) for s in cfg.data.sources], "k": t.k, "model": t.model,
                    "fit_samples": t.fit_samples, "seed": cfg.seed, "version": CACHE_VERSION}
        self.path = labeler_cache_path(cfg.data.cache_dir, material)
        self.first_user_turn = first_user_turn
        if self.path.is_file():
            state = json.loads(self.path.read_text())
            self.labeler, self.labels = TopicLabeler.from_state(state["labeler"]), state["labels"]
            return
        self.labeler, self.labels = TopicLabeler(t.k, t.model, cfg.seed), {}
        sample = []
        for keyed in iter_records(cfg.data, DataStats()):  # a first pass over the first fit_samples records
            rec = keyed.record
            if isinstance(rec, Conversation) and rec.meta.get("untopical"):
                sample.append(rec)
                if len(sample) >= t.fit_samples:
                    break
        if len(sample) < 2:
            raise UserError("data.topics: fewer than 2 conversations without a topic to cluster")
        for rec, name in zip(sample, self.labeler.fit([first_user_turn(r) for r in sample])):
            self.labels[rec.id] = name

    def assign(self, records) -> None:
        todo = [r for r in records if isinstance(r, Conversation) and r.meta.get("untopical")]
        unknown = [r for r in todo if r.id not in self.labels]
        if unknown:
            for rec, name in zip(unknown, self.labeler.label([self.first_user_turn(r) for r in unknown])):
                self.labels[rec.id] = name
        for rec in todo:
            rec.domain = self.labels[rec.id]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"labeler": self.labeler.state(), "labels": self.labels}))
        os.replace(tmp, self.path)
