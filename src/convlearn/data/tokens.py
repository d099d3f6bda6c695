"""Fast tokenization with byte positions: ids, where each token sits in the text's UTF-8 bytes, and how many
bytes of text each token adds (for masks and bits per byte).

Why not just `return_offsets_mapping`: building Python offset tuples for millions of tokens costs as much as
the tokenization itself. For tokenizers where every id stands for a fixed number of text bytes (byte-level
BPE as in Qwen2/Llama-3; SentencePiece-style "▁" + byte fallback as in Gemma/Phi-3) positions follow from a
per-id length table and a cumulative sum. The table is only trusted when the lengths add up to the text's
byte length (and an NFC normalizer has nothing to change); otherwise the text takes the offsets path.
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass

import numpy as np


@dataclass
class Encoded:
    ids: np.ndarray      # int32 token ids
    start: np.ndarray    # int64 byte offset where each token's text starts
    end: np.ndarray      # int64 byte offset where it ends
    nbytes: np.ndarray   # int32 bytes of text each token adds (shared bytes counted once)


def byte_prefix(text: str) -> np.ndarray:
    """prefix[i] = UTF-8 byte offset of character i (len(text) + 1 entries)."""
    if text.isascii():
        return np.arange(len(text) + 1, dtype=np.int64)
    cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    per_char = 1 + (cp >= 0x80).astype(np.int64) + (cp >= 0x800) + (cp >= 0x10000)
    return np.concatenate([[0], np.cumsum(per_char)])


class TokenEncoder:
    def __init__(self, tokenizer):
        self.backend = tokenizer.backend_tokenizer
        spec = json.loads(self.backend.to_str())
        self.lengths = self._length_table(tokenizer, spec)
        normalizer = (spec.get("normalizer") or {}).get("type")
        self.needs_nfc_check = normalizer == "NFC"
        self.table_usable = self.lengths is not None and normalizer in (None, "NFC")
        # special tokens that swallow the whitespace after them (Phi-3's role tokens): their length is found
        # from the text, a few per conversation
        self.rstrip = np.zeros(len(self.lengths) if self.lengths is not None else 0, dtype=bool)
        for i, t in tokenizer.added_tokens_decoder.items():
            if t.rstrip and i < len(self.rstrip):
                self.rstrip[i] = True
        self.fallbacks = 0  # texts that took the offsets path

    @staticmethod
    def _length_table(tokenizer, spec: dict) -> np.ndarray | None:
        decoders = spec.get("decoder") or {}
        kinds = [d.get("type") for d in decoders.get("decoders", [decoders])]
        vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True)
        added = {t.content for t in tokenizer.added_tokens_decoder.values()}
        table = np.zeros(max(vocab.values()) + 1, dtype=np.int32)
        if "ByteLevel" in kinds:  # each character of a byte-level token stands for one byte
            for piece, i in vocab.items():
                table[i] = len(piece.encode()) if piece in added else len(piece)
        elif "ByteFallback" in kinds:
            byte_piece = re.compile(r"<0x[0-9A-Fa-f]{2}>")
            for piece, i in vocab.items():
                table[i] = len(piece.encode()) if piece in added else 1 if byte_piece.fullmatch(piece) \
                    else len(piece.replace("▁", " ").encode())
        else:
            return None
        return table

    def encode(self, texts: list[str]) -> list[Encoded]:
        if not texts:
            return []
        encodings = self.backend.encode_batch(texts, add_special_tokens=False)
        return [self._positions(text, e) for text, e in zip(texts, encodings)]

    def _positions(self, text: str, e) -> Encoded:
        ids = np.asarray(e.ids, dtype=np.int32)
        if self.table_usable and (not self.needs_nfc_check or text.isascii()
                                  or unicodedata.is_normalized("NFC", text)):
            nbytes = self.lengths[ids]
            data = text.encode("utf-8", "surrogatepass")
            swallowing = np.nonzero(self.rstrip[ids])[0] if self.rstrip.any() else ()
            if len(swallowing):
                nbytes = nbytes.copy()
                starts = np.concatenate([[0], np.cumsum(nbytes[:-1], dtype=np.int64)])
                extra = 0
                for k in swallowing:
                    end = int(starts[k]) + extra + int(nbytes[k])
                    grown = end
                    while grown < len(data) and data[grown] in b" \t\n\r\x0b\x0c":
                        grown += 1
                    nbytes[k] += grown - end
                    extra += grown - end
            if int(nbytes.sum()) == len(data):
                end = np.cumsum(nbytes, dtype=np.int64)
                return Encoded(ids, end - nbytes, end, nbytes)
        self.fallbacks += 1
        prefix = byte_prefix(text)
        off = np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2)
        start, end = prefix[off[:, 0]], prefix[off[:, 1]]
        # Pieces of one character (byte tokens of an emoji) share its span: its bytes count once. Bytes no
        # token maps back to (a combining accent a normalizer merged) go to the next token, so the counts
        # always add up to the text's bytes.
        reach = np.maximum.accumulate(end) if len(end) else end
        if len(reach):
            reach[-1] = prefix[-1]
        nbytes = np.diff(np.concatenate([[0], reach])).astype(np.int32)
        return Encoded(ids, start, end, nbytes)


def span_mask(enc: Encoded, spans: list[tuple[int, int]]) -> np.ndarray:
    """1 for tokens that start inside one of the (sorted, disjoint) byte spans. A token that straddles a span's
    start (header text merged with the first content bytes) belongs to what comes before."""
    mask = np.zeros(len(enc.ids), dtype=np.int8)
    spans = [(s, e) for s, e in spans if e > s]
    if not spans or not len(enc.ids):
        return mask
    starts = np.array([s for s, _ in spans])
    ends = np.array([e for _, e in spans])
    j = np.searchsorted(starts, enc.start, side="right") - 1
    ok = j >= 0
    mask[ok] = (enc.start[ok] < ends[j[ok]]) & (enc.end[ok] > enc.start[ok])
    return mask
