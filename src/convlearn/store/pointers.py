"""The store's version log and pointers: the model versions the learner produced (promoted ones can be served,
rejected ones are kept with their reasons) and small named values (the current version, the learner's cursor,
the arrival counter), each set by one upsert. A mixin of Store: the same engine and transactions."""
from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import and_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ..errors import UserError
from .schema import conversations, pointers, versions, writing

CURRENT = "current_version"


@dataclass(frozen=True)
class Version:
    """A model version: the base (v0), or a learning round's candidate, promoted or rejected."""
    id: str
    status: str                    # base | promoted | rejected
    path: str                      # its model folder
    parent: str | None = None
    created: float = 0.0
    seq_from: int | None = None    # the message-id range it learned from: (seq_from, seq_to]
    seq_to: int | None = None
    conversations: int | None = None
    gate: dict | None = None       # the gate's decision as JSON (learn/records.py GateDecision)
    round: int | None = None

    @classmethod
    def from_row(cls, row) -> "Version":
        m = row._mapping
        return cls(**{f: m[f] for f in cls.__dataclass_fields__})

    def values(self) -> dict:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


class Forgotten(Exception):
    """A version cannot be promoted: conversations it was trained on were deleted or withdrawn meanwhile."""

    def __init__(self, ids: set[str]):
        super().__init__(f"{len(ids)} conversation(s) deleted or withdrawn")
        self.ids = ids


def _upsert(c, name: str, value: str, on_conflict=None) -> None:
    """Insert a pointer or, where it exists, set it (to `on_conflict`, an expression over the old row, if given)
    in one statement. SQLAlchemy's core insert has no upsert; the two dialects we support spell it alike."""
    dialect = {"sqlite": sqlite, "postgresql": postgresql}.get(c.dialect.name)
    now = time.time()
    if dialect is None:  # another database: update, else insert (not safe against a concurrent first insert)
        if c.execute(update(pointers).where(pointers.c.name == name)
                     .values(value=value if on_conflict is None else on_conflict, updated=now)).rowcount == 0:
            c.execute(pointers.insert().values(name=name, value=value, updated=now))
        return
    stmt = dialect.insert(pointers).values(name=name, value=value, updated=now)
    c.execute(stmt.on_conflict_do_update(index_elements=[pointers.c.name], set_={
        "value": stmt.excluded.value if on_conflict is None else on_conflict, "updated": now}))


def consented_among(c, conversation_ids, lock: bool = False) -> set[str]:
    """Which of these conversations still exist with consent; `lock`: FOR SHARE, so none can be deleted or
    withdrawn before the transaction ends (PostgreSQL; SQLite's writing transaction holds its lock already)."""
    ids, present = sorted(set(conversation_ids)), set()
    for i in range(0, len(ids), 500):  # bounded IN lists (SQLite's variable limit)
        q = select(conversations.c.id).where(and_(conversations.c.id.in_(ids[i:i + 500]),
                                                  conversations.c.consent.is_(True)))
        present.update(r.id for r in c.execute(q.with_for_update(read=True) if lock else q))
    return present


class VersionLog:
    engine: object  # the Store's

    def pointer(self, name: str, default: str | None = None) -> str | None:
        with self.engine.connect() as c:
            row = c.execute(select(pointers.c.value).where(pointers.c.name == name)).first()
        return row.value if row else default

    @staticmethod
    def _set_pointer(c, name: str, value: str) -> None:
        _upsert(c, name, value)

    def set_pointers(self, values: dict[str, str]) -> None:
        with writing(self.engine) as c:
            for name, value in values.items():
                self._set_pointer(c, name, value)

    def record_version(self, version: Version, pointers_: dict[str, str] | None = None, make_current: bool = False,
                       trained: list[str] = ()) -> None:
        """A version row and the pointers that go with it (the learner's cursor; `current` when promoted), in
        one transaction: the model folder exists before, so a version is never current half-written. Made
        current, it is refused (Forgotten) if any of the conversations it was `trained` on is deleted or
        withdrawn: checked in the same transaction (SQLite's write lock; PostgreSQL: FOR SHARE row locks)."""
        with writing(self.engine) as c:
            if make_current and trained:
                gone = set(trained) - consented_among(c, trained, lock=True)
                if gone:
                    raise Forgotten(gone)
            c.execute(versions.insert().values({**version.values(), "created": version.created or time.time()}))
            for name, value in (pointers_ or {}).items():
                self._set_pointer(c, name, value)
            if make_current:
                self._set_pointer(c, CURRENT, version.id)

    def set_current(self, version_id: str) -> None:
        with writing(self.engine) as c:
            row = c.execute(select(versions.c.status).where(versions.c.id == version_id)).first()
            if row is None:
                raise UserError(f"no version {version_id!r} in the store")
            if row.status == "rejected":
                raise UserError(f"version {version_id} was rejected by the gate; it cannot be made current")
            self._set_pointer(c, CURRENT, version_id)

    def current_id(self) -> str | None:
        """The id of the version that serves now (the server follows this pointer)."""
        return self.pointer(CURRENT)

    def current_version(self) -> Version | None:
        vid = self.current_id()
        return self.version(vid) if vid else None

    def version(self, version_id: str) -> Version | None:
        with self.engine.connect() as c:
            row = c.execute(select(versions).where(versions.c.id == version_id)).first()
        return Version.from_row(row) if row else None

    def versions(self) -> list[Version]:
        with self.engine.connect() as c:
            return [Version.from_row(r) for r in c.execute(select(versions).order_by(versions.c.created))]

    def lineage(self, version_id: str) -> list[Version]:
        """The version and its parents back to the base, newest first."""
        out, seen = [], set()
        while version_id and version_id not in seen:
            seen.add(version_id)
            row = self.version(version_id)
            if row is None:
                break
            out.append(row)
            version_id = row.parent
        return out
