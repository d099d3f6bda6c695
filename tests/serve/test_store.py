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


def test_keys_see_only_their_own_conversations_and_counts(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    alice, bob = (store.key_for(store.add_key(n, consent_default=n == "alice")) for n in ("alice", "bob"))
    admin = store.key_for(store.add_key("ops", admin=True))
    assert admin.admin and not alice.admin
    for i in range(3):
        store.record_exchange(alice, [{"role": "user", "content": f"alice asks {i} " + "x" * 100}], "ok", f"a{i}",
                              "v0")
    store.record_exchange(bob, [{"role": "user", "content": "bob asks"}], "ok", "b0", "v0")
    mine = store.conversations_of(alice)
    assert [c["title"] for c in mine] == [f"alice asks {i} " + "x" * (80 - 13) for i in (2, 1, 0)]
    assert all(c["messages"] == 2 and c["consent"] is True for c in mine)
    assert [c["title"] for c in store.conversations_of(bob)] == ["bob asks"]
    assert store.conversations_of(alice, limit=2, before=mine[1]["updated"]) == mine[2:]
    assert store.counts(alice) == {"conversations": 3, "consented": 3, "messages": 6, "feedback": 0}
    assert store.counts(bob) == {"conversations": 1, "consented": 0, "messages": 2, "feedback": 0}
    assert store.counts() == {"conversations": 4, "consented": 3, "messages": 8, "feedback": 0}
    assert store.conversations_of(admin) == []  # an admin key sees figures, not other keys' conversations


def test_a_key_name_over_the_column_limit_is_one_line_not_a_traceback(tmp_path):
    from helpers import cli_here
    done = cli_here("keys", "add", "n" * 300, "--dir", tmp_path / "live")
    assert done.returncode == 2
    assert done.stderr.strip() == "convlearn: error: a key's name: 1 to 200 characters; got 300"


def test_store_folder_and_files_and_exports_are_owner_only(tmp_path):
    """Created under the shell's usual umask 022, the store's folder is 0700 and its files 0600; an export
    (scrubbed by default, raw only when asked) is 0600. The control: a file created the ordinary way here is
    world-readable, so the modes below are the store's doing."""
    import json
    import os
    import stat

    from helpers import cli_here
    old = os.umask(0o022)
    try:
        folder = tmp_path / "live"
        store = Store(f"sqlite:///{folder / 'store.sqlite'}")
        key = store.key_for(store.add_key("k", consent_default=True))
        store.record_exchange(key, [{"role": "user", "content": "mail me at jane.doe@example.com please"}],
                              "sure, jane.doe@example.com", "r1", "v0")
        control = tmp_path / "plain.txt"
        control.write_text("x")
        assert stat.S_IMODE(control.stat().st_mode) == 0o644
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        files = sorted(p.name for p in folder.iterdir())
        assert "store.sqlite" in files and "store.sqlite-wal" in files
        assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {f: 0o600 for f in files}
        scrubbed, raw = tmp_path / "out.jsonl", tmp_path / "raw.jsonl"
        done = cli_here("store", "export", scrubbed, "--dir", folder)
        assert done.returncode == 0 and "scrubbed: email 2" in done.stdout
        text = scrubbed.read_text()
        assert "jane.doe@example.com" not in text and json.loads(text)["redacted"] is True
        assert cli_here("store", "export", raw, "--raw", "--dir", folder).returncode == 0
        assert "jane.doe@example.com" in raw.read_text()  # the raw export is the control: the text was there
        assert stat.S_IMODE(scrubbed.stat().st_mode) == 0o600 and stat.S_IMODE(raw.stat().st_mode) == 0o600
    finally:
        os.umask(old)
