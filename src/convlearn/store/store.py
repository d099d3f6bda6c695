"""The conversation store: API keys, conversations and their messages, consent, feedback, and (for the learner)
its cursor and the model versions. The only channel between the server and the learner.

Every write is one transaction, so a killed writer leaves either the whole exchange or nothing. Consent is
checked in the query that feeds the learner (`consented_messages`), not after it: an unconsented or deleted
conversation's text never leaves the store for training.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Integer, String, and_, cast, create_engine, delete, func, make_url, select, text, update

from ..errors import UserError
from .layout import ServeDir
from .pointers import VersionLog, _upsert, consented_among
from .schema import (
    StoreUnavailable,
    conversations,
    feedback,
    keys,
    messages,
    migrate,
    pointers,
    rate_events,
    sqlite_pragmas,
    writing,
)

KEY_PREFIX = "cl-"
NAME_CHARS = 200  # a key's name and a request's `user`: String(200) in the schema, the same limit on every backend
MIN_FREE_BYTES = 16 * 2**20  # a SQLite store's disk must have this much free for a server to start on it


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def history_hash(msgs: list[dict]) -> str:
    """What identifies a conversation's state: its roles and texts so far."""
    return hashlib.sha256(json.dumps([[m["role"], m["content"]] for m in msgs]).encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    consent_default: bool
    admin: bool = False  # sees store-wide figures; every key sees only its own conversations


def default_url(folder: str | Path) -> str:
    return ServeDir(Path(folder)).store_url


def open_store(folder: str | Path | None, url: str | None = None) -> "Store":
    """The store a command names: a database URL, or a serve directory's store.sqlite (./convlearn-live)."""
    return Store(url or default_url(folder or "convlearn-live"))


def _owner_only(db: Path) -> None:
    """A new SQLite store is created readable by its owner only: its folder 0700, the file 0600 (SQLite creates
    the -wal and -shm files with the database file's permissions)."""
    if not db.parent.exists():
        db.parent.mkdir(parents=True, mode=0o700)
    if not db.exists():
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT, 0o600))


def shown_url(url: str) -> str:
    """A store URL fit to print or write to a file: its password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: show its scheme only
        return url.split("://")[0] + "://..."


def driver_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (the `postgres` extra), not SQLAlchemy's default psycopg2, which this
    project does not declare; a URL that names its driver is left as it is."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


class Store(VersionLog):
    """Keys, conversations, what the learner may read; the version log and pointers (pointers.VersionLog)."""

    def __init__(self, url: str):
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///file:"):  # a URI names an existing file
            _owner_only(Path(url.removeprefix("sqlite:///")))
        self.url = shown_url(url)  # what is printed and logged; the password stays in the engine only
        try:
            self.engine = create_engine(driver_url(url), future=True)
        except ModuleNotFoundError as e:
            raise UserError(f"--store {self.url}: the database driver {e.name!r} is not installed "
                            f"(pip install 'convlearn[postgres]' for PostgreSQL)") from None
        except Exception as e:  # a malformed URL or a missing driver: SQLAlchemy raises several types
            raise UserError(f"--store {self.url}: {e.__class__.__name__}: "
                            f"{str(e).splitlines()[0].replace(url, self.url)}") from None
        sqlite_pragmas(self.engine)
        try:
            migrate(self.engine)
        except StoreUnavailable as e:  # the server unreachable, a wrong password, a read-only or full disk
            raise UserError(f"--store {self.url}: {e.reason}") from None

    def check_writable(self) -> None:
        """Refuse to start on a store that cannot take writes (read-only, its disk full, the database refusing),
        in one line, instead of a server whose every chat fails."""
        if self.engine.dialect.name == "sqlite" and self.engine.url.database:
            folder = Path(self.engine.url.database.removeprefix("file:").split("?")[0]).parent
            free = shutil.disk_usage(folder).free if folder.exists() else None
            if free is not None and free < MIN_FREE_BYTES:
                raise UserError(f"the store {self.url}: its disk has {free:,} bytes free (it needs at least "
                                f"{MIN_FREE_BYTES:,} to take conversations)")
        try:
            with writing(self.engine) as c:
                _upsert(c, "writable_checked", str(time.time()))
        except StoreUnavailable as e:
            raise UserError(f"--store {self.url}: {e.reason}") from None

    # -- keys --------------------------------------------------------------------------------------------
    def add_key(self, name: str, consent_default: bool = False, admin: bool = False) -> str:
        """A new API key (returned once; only its hash is stored)."""
        if not name.strip() or len(name) > NAME_CHARS:
            raise UserError(f"a key's name: 1 to {NAME_CHARS} characters; got {len(name)}")
        secret = KEY_PREFIX + secrets.token_urlsafe(24)
        with writing(self.engine) as c:
            if c.execute(select(keys.c.id).where(keys.c.name == name)).first():
                raise UserError(f"a key named {name!r} exists already")
            c.execute(keys.insert().values(name=name, key_hash=hash_key(secret), prefix=secret[:7],
                                           consent_default=consent_default, created=time.time(), admin=admin))
        return secret

    def key_for(self, secret: str | None) -> ApiKey | None:
        if not secret:
            return None
        with self.engine.connect() as c:
            row = c.execute(select(keys).where(and_(keys.c.key_hash == hash_key(secret),
                                                    keys.c.revoked.is_(None)))).first()
        return ApiKey(row.id, row.name, row.consent_default, bool(row.admin)) if row else None

    def revoke_key(self, name: str) -> bool:
        """A revoked key authenticates nothing from now on (its conversations stay, consent as it was)."""
        with writing(self.engine) as c:
            done = c.execute(update(keys).where(and_(keys.c.name == name, keys.c.revoked.is_(None)))
                             .values(revoked=time.time()))
        return done.rowcount > 0

    def list_keys(self) -> list[dict]:
        with self.engine.connect() as c:
            return [{"name": r.name, "prefix": r.prefix, "consent_default": r.consent_default,
                     "created": r.created, "revoked": r.revoked, "admin": bool(r.admin)}
                    for r in c.execute(select(keys).order_by(keys.c.id))]

    def take_rate(self, key: ApiKey, per_minute: int, now: float | None = None) -> float | None:
        """Count one request of this key against `per_minute` over the last 60 s, for every server on this store.
        None: allowed (and counted); else the seconds until the oldest counted request leaves the window. The key's
        row is locked first, so two replicas counting at once queue instead of both seeing room for one more."""
        now = time.time() if now is None else now
        with writing(self.engine) as c:
            if c.dialect.name != "sqlite":  # SQLite's writing transaction holds the database's write lock already
                c.execute(select(keys.c.id).where(keys.c.id == key.id).with_for_update())
            c.execute(delete(rate_events).where(and_(rate_events.c.key_id == key.id, rate_events.c.at <= now - 60)))
            count, oldest = c.execute(select(func.count(), func.min(rate_events.c.at))
                                      .where(rate_events.c.key_id == key.id)).first()
            if count >= per_minute:
                return max(0.0, 60 - (now - oldest))
            c.execute(rate_events.insert().values(key_id=key.id, at=now))
        return None

    # -- conversations -----------------------------------------------------------------------------------
    def record_exchange(self, key: ApiKey, history: list[dict], reply: str, response_id: str, version: str,
                        consent: bool | None = None, user: str | None = None, now: float | None = None,
                        retry_window: float = 0.0) -> str:
        """Store a request's messages and the reply, in one transaction. With a `retry_window` (seconds; the
        server passes one), the same request again from the same key within it (a client's retry after a lost
        response, a resent continuation, a regenerate) replaces the reply it got before: one conversation, the
        reply the client saw last. Otherwise the request continues the stored conversation whose messages so
        far are exactly its history less the last message (same key), or starts one. `consent` None: the
        conversation's own (a new one: the key's default)."""
        now = time.time() if now is None else now
        asked, full = history_hash(history), history + [{"role": "assistant", "content": reply}]
        with writing(self.engine) as c:
            seq = self._next_seq(c)
            found = c.execute(select(conversations.c.id).where(and_(
                conversations.c.key_id == key.id, conversations.c.asked == asked,
                conversations.c.updated >= now - retry_window)).order_by(conversations.c.updated.desc())
                .limit(1)).first() if retry_window > 0 else None
            if found is not None:  # a retry: drop the reply it replaces (and feedback on it)
                cid, start = found.id, len(history)
                old = [r.response_id for r in c.execute(select(messages.c.response_id).where(and_(
                    messages.c.conversation_id == cid, messages.c.position >= start,
                    messages.c.response_id.is_not(None))))]
                if old:
                    c.execute(delete(feedback).where(feedback.c.response_id.in_(old)))
                c.execute(delete(messages).where(and_(messages.c.conversation_id == cid,
                                                      messages.c.position >= start)))
            else:
                found = c.execute(select(conversations.c.id).where(and_(
                    conversations.c.key_id == key.id, conversations.c.head == history_hash(history[:-1])))
                    .order_by(conversations.c.updated.desc())).first() if len(history) > 1 else None
                start = len(history) - 1
            if found is None:
                cid, start = "conv-" + uuid.uuid4().hex, 0
                c.execute(conversations.insert().values(
                    id=cid, key_id=key.id, user=user, consent=key.consent_default if consent is None else consent,
                    created=now, updated=now, head=history_hash(full), asked=asked, seq=seq))
            else:
                cid = found.id
                values = {"updated": now, "head": history_hash(full), "asked": asked, "seq": seq}
                if consent is not None:
                    values["consent"] = consent
                c.execute(update(conversations).where(conversations.c.id == cid).values(**values))
            for pos in range(start, len(full)):
                m = full[pos]
                last = pos == len(full) - 1
                c.execute(messages.insert().values(
                    conversation_id=cid, position=pos, role=m["role"], content=m["content"], created=now,
                    response_id=response_id if last else None, model_version=version if last else None))
        return cid

    def _next_seq(self, c) -> int:
        """A store-wide arrival counter, taken inside the writing transaction. One upsert that writes before it
        reads: SQLite takes its write lock, PostgreSQL the row's, so concurrent writers (threads or replicas)
        queue instead of reading the same value or racing each other's first insert."""
        bumped = cast(cast(pointers.c.value, Integer) + 1, String)
        _upsert(c, "seq", "1", on_conflict=bumped)
        return int(c.execute(select(pointers.c.value).where(pointers.c.name == "seq")).scalar_one())

    def set_consent(self, conversation_id: str, key: ApiKey, consent: bool) -> bool:
        with writing(self.engine) as c:
            done = c.execute(update(conversations).where(and_(conversations.c.id == conversation_id,
                                                              conversations.c.key_id == key.id))
                             .values(consent=consent, updated=time.time()))
        return done.rowcount > 0

    def delete_conversation(self, conversation_id: str, key: ApiKey) -> bool:
        """Gone from the store: its messages, its feedback, the conversation."""
        with writing(self.engine) as c:
            owned = c.execute(select(conversations.c.id).where(and_(
                conversations.c.id == conversation_id, conversations.c.key_id == key.id))).first()
            if not owned:
                return False
            ids = [r.response_id for r in c.execute(select(messages.c.response_id).where(and_(
                messages.c.conversation_id == conversation_id, messages.c.response_id.is_not(None))))]
            if ids:
                c.execute(delete(feedback).where(feedback.c.response_id.in_(ids)))
            c.execute(delete(messages).where(messages.c.conversation_id == conversation_id))
            c.execute(delete(conversations).where(conversations.c.id == conversation_id))
        self.checkpoint()
        return True

    def unavailable(self, conversation_ids) -> set[str]:
        """Of these conversation ids, those the learner may no longer use: deleted, or consent withdrawn."""
        with self.engine.connect() as c:
            return set(conversation_ids) - consented_among(c, conversation_ids)

    def checkpoint(self) -> bool:
        """SQLite: copy the write-ahead log into the database and truncate it, so deleted rows' old pages (zeroed
        in the database by secure_delete) leave no copy in the log. False when a reader kept it from completing
        (the next checkpoint finishes it). PostgreSQL: its WAL and dead tuples are the server's (README)."""
        if self.engine.dialect.name != "sqlite":
            return True
        raw = self.engine.raw_connection()
        try:
            busy, _log, _done = raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            raw.close()
        return busy == 0

    def add_feedback(self, key: ApiKey, response_id: str, rating: int, text_: str | None) -> bool:
        with writing(self.engine) as c:
            known = c.execute(select(messages.c.id).join(conversations).where(and_(
                messages.c.response_id == response_id, conversations.c.key_id == key.id))).first()
            if not known:
                return False
            c.execute(feedback.insert().values(response_id=response_id, key_id=key.id, rating=rating, text=text_,
                                               created=time.time()))
        return True

    def conversation(self, conversation_id: str) -> dict | None:
        with self.engine.connect() as c:
            conv = c.execute(select(conversations).where(conversations.c.id == conversation_id)).first()
            if conv is None:
                return None
            msgs = c.execute(select(messages).where(messages.c.conversation_id == conversation_id)
                             .order_by(messages.c.position)).all()
        return {"id": conv.id, "consent": conv.consent, "user": conv.user, "created": conv.created,
                "messages": [{"role": m.role, "content": m.content, "model_version": m.model_version,
                              "response_id": m.response_id, "message_id": m.id} for m in msgs]}

    def conversations_of(self, key: ApiKey, limit: int = 100, before: float | None = None) -> list[dict]:
        """This key's conversations, newest change first (what its owner may review, withdraw or delete): id,
        times, consent, message count and the first user message's opening words as a title."""
        where = conversations.c.key_id == key.id
        if before is not None:
            where = and_(where, conversations.c.updated < before)
        with self.engine.connect() as c:
            rows = c.execute(select(conversations).where(where).order_by(conversations.c.updated.desc())
                             .limit(limit)).all()
            out = []
            for r in rows:
                n = c.execute(select(func.count()).select_from(messages)
                              .where(messages.c.conversation_id == r.id)).scalar()
                first = c.execute(select(messages.c.content).where(and_(
                    messages.c.conversation_id == r.id, messages.c.role == "user"))
                    .order_by(messages.c.position).limit(1)).scalar()
                out.append({"id": r.id, "object": "conversation", "created": r.created, "updated": r.updated,
                            "consent": bool(r.consent), "messages": int(n), "title": (first or "")[:80]})
        return out

    def counts(self, key: ApiKey | None = None) -> dict:
        """Store-wide counts, or one key's (its conversations, consented ones, messages, feedback)."""
        conv, fb = conversations.c.key_id == key.id if key else None, feedback.c.key_id == key.id if key else None

        def n(q, where):
            return c.execute(q if where is None else q.where(where)).scalar()
        with self.engine.connect() as c:
            return {"conversations": n(select(func.count()).select_from(conversations), conv),
                    "consented": n(select(func.count()).select_from(conversations)
                                   .where(conversations.c.consent.is_(True)), conv),
                    "messages": n(select(func.count()).select_from(messages).join(conversations), conv),
                    "feedback": n(select(func.count()).select_from(feedback), fb)}

    # -- what the learner may read -----------------------------------------------------------------------
    def consented_messages(self, after: int, upto: int | None = None, limit_conversations: int | None = None
                           ) -> list[dict]:
        """Consented conversations with messages in the message-id range (after, upto], oldest new message first:
        each with its history up to `upto` and `first_new`, the position of its first message in the range.
        Consent is a condition of this query: nothing of an unconsented or deleted conversation comes out."""
        in_range = messages.c.id > after if upto is None else and_(messages.c.id > after, messages.c.id <= upto)
        with self.engine.connect() as c:
            firsts = c.execute(
                select(messages.c.conversation_id, func.min(messages.c.id).label("first"),
                       func.max(messages.c.id).label("last"))
                .join(conversations, conversations.c.id == messages.c.conversation_id)
                .where(and_(in_range, conversations.c.consent.is_(True)))
                .group_by(messages.c.conversation_id).order_by(func.min(messages.c.id))
                .limit(limit_conversations)).all()
            out = []
            for row in firsts:
                conv = c.execute(select(conversations).where(conversations.c.id == row.conversation_id)).first()
                msgs = c.execute(select(messages).where(and_(messages.c.conversation_id == row.conversation_id,
                                                             messages.c.id <= row.last))
                                 .order_by(messages.c.position)).all()
                first_new = next(m.position for m in msgs if m.id > after)
                answered = [m.response_id for m in msgs if m.response_id]
                down = c.execute(select(func.count()).select_from(feedback).where(and_(
                    feedback.c.response_id.in_(answered), feedback.c.rating < 0))).scalar() if answered else 0
                out.append({"id": conv.id, "key_id": conv.key_id, "first_new": first_new, "last_message": row.last,
                            "first_message": row.first, "created": msgs[-1].created, "downvotes": int(down),
                            "messages": [{"role": m.role, "content": m.content} for m in msgs]})
        return out

    def pending_consented(self, after: int) -> tuple[int, float | None]:
        """How many consented conversations have messages newer than `after`, and when the oldest of those
        messages arrived (the learner's triggers)."""
        with self.engine.connect() as c:
            row = c.execute(select(func.count(func.distinct(messages.c.conversation_id)), func.min(messages.c.created))
                            .join(conversations, conversations.c.id == messages.c.conversation_id)
                            .where(and_(messages.c.id > after, conversations.c.consent.is_(True)))).first()
        return int(row[0] or 0), row[1]

    def last_message_id(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(select(func.max(messages.c.id))).scalar() or 0)

    def integrity_check(self) -> str:
        """SQLite's own check of the file ("ok"), or "n/a" on another database."""
        if self.engine.dialect.name != "sqlite":
            return "n/a"
        with self.engine.connect() as c:
            return c.execute(text("PRAGMA integrity_check")).scalar()
