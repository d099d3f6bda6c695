"""The conversation store's tables and their migrations (SQLAlchemy Core: SQLite by default, any SQLAlchemy URL
such as Postgres where a team outgrows one machine; one code path for both).

Why our own migration list and not Alembic: the schema is a handful of tables that this module owns; a version
table plus ordered steps, applied in one transaction at open, is all it needs, and it keeps the store usable
from a wheel with no migration scripts on disk.
"""
from __future__ import annotations

from contextlib import contextmanager

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from ..errors import UserError

metadata = MetaData()

# API keys: only a hash of the key is kept; consent_default applies to this key's requests that say nothing.
keys = Table(
    "api_keys", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("consent_default", Boolean, nullable=False),
    Column("created", Float, nullable=False),
    Column("revoked", Float),  # when it was revoked (its requests get 401); null: live
    Column("admin", Boolean),  # may see store-wide figures (/v1/status, /v1/versions); null or false: not
)

# One chat: `head` is a hash of its messages so far, so a request that carries this history plus one new user
# message continues it (OpenAI requests carry the whole history).
conversations = Table(
    "conversations", metadata,
    Column("id", String(40), primary_key=True),
    Column("key_id", Integer, ForeignKey("api_keys.id"), nullable=False),
    Column("user", String(200)),
    Column("consent", Boolean, nullable=False),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("head", String(64), nullable=False),
    Column("seq", Integer, nullable=False),  # arrival order of the last change (the learner's cursor reads it)
    # a hash of the messages the last reply answered: the same request again (a client's retry, a regenerate)
    # replaces that reply instead of storing the conversation twice
    Column("asked", String(64)),
    Index("conversations_head", "key_id", "head"),
    Index("conversations_asked", "key_id", "asked"),
    Index("conversations_seq", "seq"),
)

messages = Table(
    "messages", metadata,
    Column("id", Integer, primary_key=True),
    Column("conversation_id", String(40), ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("role", String(20), nullable=False),
    Column("content", Text, nullable=False),
    Column("response_id", String(64)),        # assistant turns: the id the API returned
    Column("model_version", String(64)),      # assistant turns: which model version answered
    Column("created", Float, nullable=False),
    Index("messages_conversation", "conversation_id", "position", unique=True),
    Index("messages_response", "response_id"),
)

feedback = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True),
    Column("response_id", String(64), nullable=False),
    Column("key_id", Integer, ForeignKey("api_keys.id"), nullable=False),
    Column("rating", Integer, nullable=False),  # +1 thumbs up, -1 thumbs down
    Column("text", Text),
    Column("created", Float, nullable=False),
)

# Model versions the learner produced: promoted ones can be served; rejected ones are kept with their reasons.
versions = Table(
    "versions", metadata,
    Column("id", String(64), primary_key=True),
    Column("parent", String(64)),
    Column("status", String(20), nullable=False),   # base | promoted | rejected
    Column("path", Text, nullable=False),           # the model folder (train/model_folder.py)
    Column("created", Float, nullable=False),
    Column("seq_from", Integer),                    # the conversations it learned from (arrival order range)
    Column("seq_to", Integer),
    Column("conversations", Integer),
    Column("gate", JSON),                           # the gate's figures and reasons
    Column("round", Integer),
)

# Small named values: the current version (one atomic pointer), the learner's cursor.
pointers = Table(
    "pointers", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated", Float, nullable=False),
)

# Each key's recent requests (the last minute's), shared by every server on the store: N replicas enforce one
# per-key rate limit, not N. Rows older than the window are deleted as the key's next request is counted.
rate_events = Table(
    "rate_events", metadata,
    Column("id", Integer, primary_key=True),
    Column("key_id", Integer, ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False),
    Column("at", Float, nullable=False),
    Index("rate_events_key", "key_id", "at"),
)

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))


def _v1(conn) -> None:
    metadata.create_all(conn)


def _v2(conn) -> None:
    """Keys can be revoked. (A store created at v2 has the column from _v1's create_all already.)"""
    if "revoked" not in {c["name"] for c in inspect(conn).get_columns("api_keys")}:
        conn.execute(text("ALTER TABLE api_keys ADD COLUMN revoked FLOAT"))


def _v3(conn) -> None:
    """Admin keys (store-wide figures are theirs only)."""
    if "admin" not in {c["name"] for c in inspect(conn).get_columns("api_keys")}:
        conn.execute(text("ALTER TABLE api_keys ADD COLUMN admin BOOLEAN"))


def _v4(conn) -> None:
    """Per-key rate limits kept in the store; retries recognised by what a reply answered."""
    rate_events.create(conn, checkfirst=True)
    if "asked" not in {c["name"] for c in inspect(conn).get_columns("conversations")}:
        conn.execute(text("ALTER TABLE conversations ADD COLUMN asked VARCHAR(64)"))
        conn.execute(text("CREATE INDEX conversations_asked ON conversations (key_id, asked)"))


# Ordered migrations: index i upgrades a store at version i to version i + 1.
MIGRATIONS = [_v1, _v2, _v3, _v4]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(engine: Engine) -> int:
    """Bring a store up to SCHEMA_VERSION in one transaction; returns the version it was at."""
    with writing(engine) as conn:
        if engine.dialect.name == "postgresql":  # processes started together migrate one at a time
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        schema_version.create(conn, checkfirst=True)
        row = conn.execute(select(schema_version.c.version)).first()
        start = row.version if row else 0
        if start > SCHEMA_VERSION:
            raise UserError(f"the store is at schema version {start}; this convlearn knows up to {SCHEMA_VERSION}")
        for step in MIGRATIONS[start:]:
            step(conn)
        if row is None:
            conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
        elif start != SCHEMA_VERSION:
            conn.execute(schema_version.update().values(version=SCHEMA_VERSION))
    return start


MIGRATION_LOCK = 0x636C6D67  # PostgreSQL advisory-lock key held while migrating ("clmg")


class StoreUnavailable(UserError):
    """The store refused a write: read-only, its disk full, the database gone. One line, the database's own
    reason; `full` when more room would fix it (HTTP 507 rather than 503)."""

    def __init__(self, reason: str):
        super().__init__(f"the store cannot take writes: {reason}")
        self.reason = reason
        self.full = "full" in reason.lower() or "no space" in reason.lower()


@contextmanager
def writing(engine: Engine):
    """A transaction that means to write. On SQLite it is BEGIN IMMEDIATE: the write lock is taken first (waiting
    on busy_timeout), so a read-then-write can never fail on a stale snapshot and concurrent migrations queue.
    Elsewhere an ordinary transaction (row locks and upserts do the rest). A database that refuses the write
    (read-only, full, unreachable) raises StoreUnavailable."""
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                yield conn
    except OperationalError as e:
        raise StoreUnavailable(str(e.orig).strip().splitlines()[0]) from None


def sqlite_pragmas(engine: Engine) -> None:
    """SQLite: write-ahead log (readers never block the writer, a killed writer loses no committed row),
    foreign keys on (deletes cascade), secure_delete (a deleted conversation's text is overwritten), a busy
    timeout instead of immediate 'database is locked'. SQLAlchemy emits BEGIN itself (its documented recipe:
    pysqlite's own implicit BEGIN skips DDL, so a migration would not be one transaction), IMMEDIATE for
    `writing`."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("sqlite_immediate") else "BEGIN")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA secure_delete=ON")  # deleted rows' bytes are zeroed, not left in free pages
        cur.execute("PRAGMA busy_timeout=10000")
        cur.close()
