"""Consented conversations out of the store as JSON lines our own readers ingest (lmsys or sharegpt): for a
dataset, a backup, or another trainer. Apart from store.py because nothing else reads the store this way."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from ..errors import UserError
from .schema import conversations, messages
from .store import Store

FORMATS = ("lmsys", "sharegpt")


def export_conversations(store: Store, out: str | Path, fmt: str, transform: Callable[[str], str] | None = None
                         ) -> int:
    """Write the consented conversations to `out` (owner-only, 0600; all or nothing: a temporary file renamed),
    every message's text through `transform` (the CLI passes the scrubber unless asked for raw text). Returns
    how many were written."""
    if fmt not in FORMATS:
        raise UserError(f"--format: {' or '.join(FORMATS)}; got {fmt!r}")
    n, clean = 0, transform or (lambda t: t)
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    tmp.unlink(missing_ok=True)
    with store.engine.connect() as c, open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w",
                                           encoding="utf-8") as fh:
        for conv in c.execute(select(conversations).where(conversations.c.consent.is_(True))
                              .order_by(conversations.c.created)):
            msgs = c.execute(select(messages).where(messages.c.conversation_id == conv.id)
                             .order_by(messages.c.position)).all()
            if fmt == "lmsys":
                row = {"conversation_id": conv.id, "model": msgs[-1].model_version or "", "turn":
                       sum(m.role == "assistant" for m in msgs), "language": None, "redacted": transform is not None,
                       "openai_moderation": [],
                       "conversation": [{"role": m.role, "content": clean(m.content)} for m in msgs]}
            else:
                row = {"id": conv.id, "conversations": [{"from": {"user": "human", "assistant": "gpt"}.get(
                    m.role, m.role), "value": clean(m.content)} for m in msgs]}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(out)
    return n
