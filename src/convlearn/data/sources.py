"""One adapter per source format: raw rows -> normalized `Conversation`s (or `Document`s for text), with
every row that cannot be kept yielded as a `Skip` naming the reason.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator

from ..errors import UserError
from .normalize import clean_text, html_to_text, looks_like_html, make_conversation, map_role
from .oasst import oasst_conversations
from .records import Conversation, Document, Skip

Item = Conversation | Document | Skip


def detect_format(rows: list) -> str:
    """The format of a source from its first rows (the first row that any rule recognises wins)."""
    for row in rows:
        if not isinstance(row, dict):
            continue
        if isinstance(row.get("messages"), list) and "source" in row and "meta" in row:
            return "convlearn"
        if "topic" in row and "conversation" in row and "index" in row:
            return "chatterbot"
        if isinstance(row.get("conversation"), list):
            return "lmsys"
        if isinstance(row.get("conversations"), list):
            return "sharegpt"
        if "plain_text" in row and "message_index" in row:
            return "sharechat"
        if "message_tree_id" in row and ("prompt" in row or "parent_id" in row or "message_id" in row):
            return "oasst"
        if isinstance(row.get("text"), str):
            return "text"
    raise UserError("cannot determine the format from the first records; pass --format "
                    "(lmsys|sharegpt|sharechat|oasst|text|chatterbot|convlearn)")


def adapt(fmt: str, rows: Iterable, source: str, edits: Counter, best_path_only: bool = False
          ) -> Iterator[Item]:
    """Turn raw rows (dicts or Skips from the reader) into records of format `fmt`."""
    if fmt == "sharechat":
        yield from _sharechat(rows, source, edits)
        return
    if fmt == "oasst":
        yield from oasst_conversations(rows, source, edits, best_path_only)
        return
    one = {"lmsys": _lmsys, "sharegpt": _sharegpt, "text": _text, "chatterbot": _chatterbot,
           "convlearn": _native}[fmt]
    for index, row in enumerate(rows):
        if isinstance(row, Skip):
            yield row
        elif not isinstance(row, dict):
            yield Skip("not_an_object", type(row).__name__)
        else:
            try:
                yield one(row, index, source, edits)
            except Skip as s:
                yield s


def _field(row: dict, name: str, tp: type | tuple[type, ...]):
    if name not in row or row[name] is None:
        raise Skip("missing_field", name)
    value = row[name]
    if not isinstance(value, tp):
        raise Skip("wrong_type", f"{name} is {type(value).__name__}")
    return value


def _content_id(source: str, pairs: list) -> str:
    """A stable id for records that carry none: a hash of their content."""
    h = hashlib.sha1(repr(pairs).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{source}:{h}"


def _messages(items: list, role_key: str, text_key: str, html: bool = False) -> list[tuple[str, str]]:
    pairs = []
    for m in items:
        if not isinstance(m, dict):
            raise Skip("wrong_type", "message is not an object")
        if role_key not in m or text_key not in m:
            raise Skip("missing_field", role_key if role_key not in m else text_key)
        text = m[text_key]
        if html and isinstance(text, str) and looks_like_html(text):
            text = html_to_text(text)
        pairs.append((map_role(m[role_key]), text))
    return pairs


def _lmsys(row: dict, index: int, source: str, edits: Counter) -> Conversation:
    pairs = _messages(_field(row, "conversation", list), "role", "content")
    moderation = row.get("openai_moderation") or []
    flagged = any(isinstance(m, dict) and m.get("flagged") for m in moderation) if isinstance(
        moderation, list) else False
    meta = {"model": row.get("model"), "redacted": row.get("redacted"), "flagged": flagged,
            "turn": row.get("turn")}
    cid = row.get("conversation_id") or _content_id(source, pairs)
    return make_conversation(cid, source, pairs, edits, row.get("language"), None, meta)


def _native(row: dict, index: int, source: str, edits: Counter) -> Conversation:
    """convlearn's own records (`Conversation.to_dict`, one per line): what a learning round writes after its
    conversations went through the pipeline; read back as they are (data/stream.py does not filter or scrub
    them a second time)."""
    try:
        conv = Conversation.from_dict(row)
    except (TypeError, KeyError):
        raise Skip("wrong_type", "not a convlearn record (Conversation.to_dict)") from None
    if not all(isinstance(m.content, str) and isinstance(m.role, str) for m in conv.messages) \
            or not isinstance(conv.first_trained, int):
        raise Skip("wrong_type", "a convlearn record's message is not (role, content) strings")
    return conv


def _sharegpt(row: dict, index: int, source: str, edits: Counter) -> Conversation:
    pairs = _messages(_field(row, "conversations", list), "from", "value", html=True)
    cid = row.get("id") or _content_id(source, pairs)
    return make_conversation(cid, source, pairs, edits, row.get("lang") or row.get("language"), None,
                             {k: row[k] for k in ("model",) if k in row})


def _text(row: dict, index: int, source: str, edits: Counter) -> Document:
    text = clean_text(_field(row, "text", str), edits)
    if not text.strip():
        raise Skip("empty")
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    meta = {**meta, **{k: row[k] for k in ("url", "timestamp") if row.get(k) is not None}}
    doc_id = row.get("id") or row.get("url") or meta.get("id") or f"{source}:{index}"
    language = row.get("language") or meta.get("language")
    return Document(str(doc_id), source, text, language if isinstance(language, str) else None, None,
                    _plain(meta))


def _plain(meta: dict) -> dict:
    """Metadata as JSON-able plain values (parquet timestamps and the like become strings)."""
    return {k: v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)
            for k, v in meta.items()}


def _chatterbot(row: dict, index: int, source: str, edits: Counter) -> Conversation:
    turns = _field(row, "conversation", list)
    if not all(isinstance(t, str) for t in turns):
        raise Skip("wrong_type", "a chatterbot turn is not a string")
    pairs = [("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(turns)]
    topic = row.get("topic") or "chatterbot"
    return make_conversation(f"chatterbot/{topic}/{row.get('index', index)}", source, pairs, edits, "en",
                             topic, {"categories": row.get("categories")})


def _sharechat(rows: Iterable, source: str, edits: Counter) -> Iterator[Item]:
    """ShareChat stores one row per message: group by url, order by message_index."""
    groups: dict[str, list[tuple[int, dict]]] = {}
    for row in rows:
        if isinstance(row, Skip):
            yield row
            continue
        if not isinstance(row, dict):
            yield Skip("not_an_object", type(row).__name__)
            continue
        url = row.get("url")
        if not isinstance(url, str) or not url:
            yield Skip("missing_field" if url in (None, "") else "wrong_type", "url")
            continue
        try:
            idx = int(row.get("message_index"))
        except (TypeError, ValueError):
            yield Skip("wrong_type", "message_index")
            continue
        groups.setdefault(url, []).append((idx, row))
    for url, items in groups.items():
        items.sort(key=lambda t: t[0])
        try:
            pairs = _messages([r for _, r in items], "role", "plain_text")
            first = items[0][1]
            meta = {"platform": first.get("platform"), "url": url, "turns_count": first.get("turns_count")}
            yield make_conversation(url, source, pairs, edits, first.get("detected_language_final"), None, meta)
        except Skip as s:
            yield s


PLACEHOLDER = re.compile(r"\bNAME_\d+\b|<(?:REDACTED|URL|NAME|PERSON|PHONE|EMAIL|ADDRESS)>")


def count_placeholders(text: str, counter: Counter) -> None:
    """Source redaction placeholders (LMSYS NAME_1, ShareChat <REDACTED>, <URL>) are kept and counted."""
    for m in PLACEHOLDER.finditer(text):
        counter["NAME_n" if m.group(0).startswith("NAME_") else m.group(0)] += 1
