"""The normalized record types every source is turned into, and the counters of what was skipped and why."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")

# Why a raw record was not kept. Every skip carries one of these names (and is counted under it).
SKIP_REASONS = {
    "invalid_json": "the line or file is not valid JSON",
    "truncated": "the file ends inside a record (a download cut short, a cut .gz): every complete record is kept",
    "too_deep": "a record nested deeper than the readers' limit (data/readers.py MAX_DEPTH)",
    "csv_quote": "a CSV record whose quote is never closed (reading resumes at its next line)",
    "cycle": "OpenAssistant messages whose parents form a loop (no root to reach them from)",
    "duplicate_id": "an OpenAssistant message_id used again in the same tree",
    "message_too_long": "a message longer than data.max_message_chars (checked before tokenizing)",
    "invalid_yaml": "the chatterbot YAML file cannot be parsed",
    "not_an_object": "the record is not a JSON object / mapping",
    "missing_field": "a field the format needs is absent",
    "wrong_type": "a field has the wrong type (e.g. messages not a list, text not a string)",
    "unknown_role": "a message role the format does not define",
    "empty": "no message (or document) with any text",
    "no_exchange": "no user message followed by an assistant message",
    "deleted": "OpenAssistant message marked deleted (with everything under it)",
    "orphan": "OpenAssistant message whose parent is missing",
    "language": "language not in data.languages",
    "moderation": "flagged by the source's moderation (data.drop_flagged)",
    "too_short": "fewer characters than data.min_chars",
    "too_long": "more characters than data.max_chars",
    "duplicate": "same roles and text as a conversation already kept",
}


class Skip(Exception):
    """Raised by a reader/adapter/filter for a record that cannot be kept. `reason` is in SKIP_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in SKIP_REASONS, reason
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass
class Message:
    role: str      # system | user | assistant
    content: str


@dataclass
class Conversation:
    id: str
    source: str
    messages: list[Message]
    language: str | None = None
    domain: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # Trained from message k on: the messages before it are context only (no loss), as torchtune's
    # `Message.masked`. The online learner sets it on a conversation continued since it was last trained on.
    first_trained: int = 0

    def chars(self) -> int:
        return sum(len(m.content) for m in self.messages)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Conversation":
        """The inverse of to_dict (convlearn's native record format, data/sources.py `convlearn`)."""
        return cls(**{**d, "messages": [Message(**m) for m in d["messages"]]})


@dataclass
class Document:
    """A plain text document (the "original distribution": C4, RedPajama, docstrings)."""
    id: str
    source: str
    text: str
    language: str | None = None
    domain: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def chars(self) -> int:
        return len(self.text)


@dataclass
class DataStats:
    """What a read kept, skipped (by reason), edited and scrubbed. Printed by `data inspect`."""
    format: str = ""
    rows: int = 0
    conversations: int = 0
    documents: int = 0
    messages: int = 0
    heldout: int = 0
    skipped: Counter = field(default_factory=Counter)
    edits: Counter = field(default_factory=Counter)       # message-level changes: merged, empty dropped, ...
    scrubbed: Counter = field(default_factory=Counter)    # kind -> replacements
    placeholders: Counter = field(default_factory=Counter)  # source redaction placeholders kept (NAME_1 ...)
    languages: Counter = field(default_factory=Counter)
    domains: Counter = field(default_factory=Counter)
    turns: Counter = field(default_factory=Counter)       # user->assistant exchanges per conversation

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] += n

    def keep(self, rec: Conversation | Document) -> None:
        if isinstance(rec, Conversation):
            self.conversations += 1
            self.messages += len(rec.messages)
            self.turns[sum(1 for m in rec.messages if m.role == "assistant")] += 1
        else:
            self.documents += 1
        self.languages[rec.language or "unknown"] += 1
        self.domains[rec.domain or "unknown"] += 1

    def to_json(self) -> dict:
        return {
            "format": self.format, "rows": self.rows, "conversations": self.conversations,
            "documents": self.documents, "messages": self.messages, "heldout": self.heldout,
            "skipped": dict(sorted(self.skipped.items())), "edits": dict(sorted(self.edits.items())),
            "scrubbed": dict(sorted(self.scrubbed.items())),
            "placeholders": dict(sorted(self.placeholders.items())),
            "languages": dict(self.languages.most_common()), "domains": dict(self.domains.most_common()),
            "turns_per_conversation": {str(k): v for k, v in sorted(self.turns.items())},
        }
