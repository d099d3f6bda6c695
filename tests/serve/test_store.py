"""The store under concurrent writers: the arrival counter is taken by one upsert, so threads that write at once
(as a server's request threads, or replicas on one database) never collide or reuse a value."""
import subprocess
import sys
import threading
import time

from sqlalchemy import select

from convlearn.store.schema import conversations, schema_version
from convlearn.store.store import Store


def test_concurrent_first_writes_each_get_their_own_arrival_number(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    key = store.key_for(store.add_key("k", consent_default=True))
    start, errors, n_threads, per_thread = threading.Barrier(8), [], 8, 6

    def writer(i):
        start.wait()
        for j in range(per_thread):
            try:
                store.record_exchange(key, [{"role": "user", "content": f"writer {i} turn {j}"}], "ok", f"r{i}-{j}",
                                      "v0")
            except Exception as e:  # noqa: BLE001 - any failure is the finding
                errors.append(repr(e))
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with store.engine.connect() as c:
        seqs = sorted(r.seq for r in c.execute(select(conversations.c.seq)))
    assert seqs == list(range(1, n_threads * per_thread + 1))
    assert store.pointer("seq") == str(n_threads * per_thread)


def test_processes_started_together_migrate_one_at_a_time(tmp_path):
    """Four processes open one fresh store at once (a server and a learner started together): each migrates or
    finds it migrated; none fails, and the schema is recorded once."""
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    code = ("import sys, time; t = float(sys.argv[2]); time.sleep(max(0, t - time.time()));"
            "from convlearn.store.store import Store; s = Store(sys.argv[1]); s.add_key(sys.argv[3])")
    at = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", code, url, str(at), f"k{i}"], stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    errs = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in errs] == [0, 0, 0, 0], [e for _, e in errs if e][:1]
    store = Store(url)
    with store.engine.connect() as c:
        assert len(c.execute(select(schema_version)).all()) == 1
    assert sorted(k["name"] for k in store.list_keys()) == ["k0", "k1", "k2", "k3"]


def test_a_revoked_key_authenticates_nothing_and_its_conversations_stay(tmp_path):
    from helpers import cli_here
    folder = tmp_path / "live"
    store = Store(f"sqlite:///{folder / 'store.sqlite'}")
    secret = store.add_key("alice", consent_default=True)
    store.record_exchange(store.key_for(secret), [{"role": "user", "content": "hi"}], "hello", "r1", "v0")
    done = cli_here("keys", "revoke", "alice", "--dir", folder)
    assert done.returncode == 0 and "revoked" in done.stderr
    assert store.key_for(secret) is None and store.counts()["conversations"] == 1
    assert cli_here("keys", "list", "--dir", folder).stdout.strip().endswith("revoked")
    again = cli_here("keys", "revoke", "alice", "--dir", folder)  # the negative case: nothing left to revoke
    assert again.returncode == 2
    assert again.stderr.strip() == "convlearn: error: no key named 'alice' (convlearn keys list)"


def test_a_store_at_schema_1_migrates_to_revocable_keys(tmp_path):
    """A store written before keys could be revoked (schema 1, no column) gains the column and keeps its keys."""
    from sqlalchemy import create_engine, text
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE api_keys (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL UNIQUE, "
                       "key_hash VARCHAR(64) NOT NULL UNIQUE, prefix VARCHAR(16) NOT NULL, consent_default BOOLEAN "
                       "NOT NULL, created FLOAT NOT NULL)"))
        c.execute(text("INSERT INTO api_keys VALUES (1, 'old', 'h', 'cl-xxxx', 1, 0)"))
        c.execute(text("CREATE TABLE schema_version (version INTEGER NOT NULL)"))
        c.execute(text("INSERT INTO schema_version VALUES (1)"))
    engine.dispose()
    store = Store(url)
    assert [(k["name"], k["revoked"]) for k in store.list_keys()] == [("old", None)]
    assert store.revoke_key("old") and store.list_keys()[0]["revoked"] is not None
