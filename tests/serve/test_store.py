"""The store on both backends (SQLite, and a real PostgreSQL cluster the tests start: `store_url` runs a test on
each): concurrent writers never collide or reuse the arrival counter, processes started together migrate one at a
time, keys (revoked, admin) and what each key may see, limits the same on every backend, owner-only files."""
import subprocess
import sys
import threading
import time

from sqlalchemy import select

from convlearn.store.schema import conversations, schema_version
from convlearn.store.store import Store


def test_concurrent_first_writes_each_get_their_own_arrival_number(store_url):
    store = Store(store_url)
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


def test_processes_started_together_migrate_one_at_a_time(store_url):
    """Four processes open one fresh store at once (a server and a learner started together): each migrates or
    finds it migrated; none fails, and the schema is recorded once."""
    url = store_url
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


def test_a_revoked_key_authenticates_nothing_and_its_conversations_stay(store_url):
    from helpers import cli_here
    store = Store(store_url)
    where = ("--store", store_url)
    secret = store.add_key("alice", consent_default=True)
    store.record_exchange(store.key_for(secret), [{"role": "user", "content": "hi"}], "hello", "r1", "v0")
    done = cli_here("keys", "revoke", "alice", *where)
    assert done.returncode == 0 and "revoked" in done.stderr
    assert store.key_for(secret) is None and store.counts()["conversations"] == 1
    assert cli_here("keys", "list", *where).stdout.strip().endswith("revoked")
    again = cli_here("keys", "revoke", "alice", *where)  # the negative case: nothing left to revoke
    assert again.returncode == 2
    assert again.stderr.strip() == "convlearn: error: no key named 'alice' (convlearn keys list)"


def test_a_store_at_schema_1_migrates_to_the_current_schema(tmp_path):
    """A store written at schema 1 (keys without revoked/admin, conversations without asked) gains the columns
    and keeps its rows."""
    from sqlalchemy import create_engine, text
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE api_keys (id INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL UNIQUE, "
                       "key_hash VARCHAR(64) NOT NULL UNIQUE, prefix VARCHAR(16) NOT NULL, consent_default BOOLEAN "
                       "NOT NULL, created FLOAT NOT NULL)"))
        c.execute(text("INSERT INTO api_keys VALUES (1, 'old', 'h', 'cl-xxxx', 1, 0)"))
        c.execute(text("CREATE TABLE conversations (id VARCHAR(40) PRIMARY KEY, key_id INTEGER NOT NULL, user "
                       "VARCHAR(200), consent BOOLEAN NOT NULL, created FLOAT NOT NULL, updated FLOAT NOT NULL, head "
                       "VARCHAR(64) NOT NULL, seq INTEGER NOT NULL)"))
        c.execute(text("INSERT INTO conversations VALUES ('conv-1', 1, NULL, 1, 0, 0, 'h', 1)"))
        c.execute(text("CREATE TABLE schema_version (version INTEGER NOT NULL)"))
        c.execute(text("INSERT INTO schema_version VALUES (1)"))
    engine.dispose()
    store = Store(url)
    assert [(k["name"], k["revoked"], k["admin"]) for k in store.list_keys()] == [("old", None, False)]
    with store.engine.connect() as c:  # later columns: present, empty on the old rows
        assert c.execute(text("SELECT id, asked FROM conversations")).all() == [("conv-1", None)]
    assert store.revoke_key("old") and store.list_keys()[0]["revoked"] is not None


def test_keys_see_only_their_own_conversations_and_counts(store_url):
    store = Store(store_url)
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


def test_a_key_name_over_the_column_limit_is_one_line_not_a_traceback(store_url):
    from helpers import cli_here
    done = cli_here("keys", "add", "n" * 300, "--store", store_url)
    assert done.returncode == 2
    assert done.stderr.strip() == "convlearn: error: a key's name: 1 to 200 characters; got 300"
    assert cli_here("keys", "add", "n" * 200, "--store", store_url).returncode == 0  # the limit itself is fine


def test_the_database_password_is_never_printed_or_written(pg_url, tmp_path):
    """The start-up line, the store's errors and the configs a learner writes carry the URL without its
    password; the control: the URL the test connects with does hold it."""
    from convlearn.config import dump_config, load_config
    from helpers import cli_here
    from pgcluster import PASSWORD
    assert PASSWORD in pg_url
    store = Store(pg_url)
    assert PASSWORD not in store.url and ":***@" in store.url
    wrong = pg_url.replace(PASSWORD, PASSWORD + "x")
    done = cli_here("store", "info", "--store", wrong)
    assert done.returncode == 2 and PASSWORD not in done.stderr and "password authentication failed" in done.stderr
    cfg_file = tmp_path / "learn.yaml"
    cfg_file.write_text(f"model: {{name: m}}\nlearn: {{dir: {tmp_path / 'live'}, store: '{pg_url}'}}\n")
    dumped = dump_config(load_config(cfg_file))
    assert PASSWORD not in dumped and ":***@127.0.0.1" in dumped


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


def test_one_rate_limit_per_key_across_replicas(store_url):
    """Two Store objects on one database (two replicas' engines), eight threads asking at once: exactly the limit
    is allowed in the window, the rest told how long to wait; a minute later the key has room again."""
    first, second = Store(store_url), Store(store_url)
    key = first.key_for(first.add_key("k"))
    other = first.key_for(first.add_key("other"))
    now, allowed, refused = time.time(), [], []
    start = threading.Barrier(8)

    def ask(i):
        store = (first, second)[i % 2]
        start.wait()
        for _ in range(5):
            wait = store.take_rate(key, 10, now)
            (allowed if wait is None else refused).append(wait)
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(allowed) == 10 and len(refused) == 30 and all(0 < w <= 60 for w in refused)
    assert first.take_rate(other, 10, now) is None  # another key's budget is its own
    assert second.take_rate(key, 10, now + 61) is None  # the window moved on


def test_the_same_request_again_is_one_conversation_with_the_last_reply(store_url):
    """A retry (the client never got the reply), a resent continuation and a regenerate replace the reply they
    repeat: one conversation, the reply the client saw last, feedback on the replaced reply gone. The controls:
    another key's same request, and the same request after the retry window, are conversations of their own."""
    RETRY_WINDOW_S = 600.0  # what the server passes by default (serve/admission.py Limits.retry_window_s)
    store = Store(store_url)

    def rec(key, history, reply, rid, now):
        return store.record_exchange(key, history, reply, rid, "v0", now=now, retry_window=RETRY_WINDOW_S)
    a, b = (store.key_for(store.add_key(n, consent_default=True)) for n in ("a", "b"))
    u1 = [{"role": "user", "content": "What is the capital of Norway?"}]
    cid = rec(a, u1, "Oslo.", "r1", 1000.0)
    assert store.add_feedback(a, "r1", 1, None)
    assert rec(a, u1, "It is Oslo.", "r2", 1005.0) == cid  # the retry
    conv = store.conversation(cid)
    assert [(m["content"], m["response_id"]) for m in conv["messages"]] == [(u1[0]["content"], None),
                                                                             ("It is Oslo.", "r2")]
    assert store.counts()["feedback"] == 0  # it rated a reply that is no longer stored
    more = u1 + [{"role": "assistant", "content": "It is Oslo."}, {"role": "user", "content": "And Sweden?"}]
    assert rec(a, more, "Stockholm.", "r3", 1010.0) == cid
    assert rec(a, more, "Stockholm!", "r4", 1011.0) == cid  # the continuation resent
    assert [m["content"] for m in store.conversation(cid)["messages"]] == [
        u1[0]["content"], "It is Oslo.", "And Sweden?", "Stockholm!"]
    assert store.counts() == {"conversations": 1, "consented": 1, "messages": 4, "feedback": 0}
    other = rec(b, u1, "Oslo.", "r5", 1012.0)
    q = [{"role": "user", "content": "hello"}]
    first = rec(a, q, "hi", "r6", 2000.0)
    later = rec(a, q, "hi", "r7", 2000.0 + RETRY_WINDOW_S + 1)
    assert len({cid, other, first, later}) == 4 and store.counts()["conversations"] == 4
    again = store.record_exchange(a, q, "hi", "r8", "v0", now=2000.0 + RETRY_WINDOW_S + 2)  # no window: no retry
    assert again not in {cid, other, first, later} and store.counts()["conversations"] == 5


def test_a_missing_database_driver_is_one_line_without_the_password():
    from helpers import cli_here
    done = cli_here("store", "info", "--store", "postgresql+pg8000://me:hunter2@127.0.0.1:1/db")
    assert done.returncode == 2 and "hunter2" not in done.stderr
    assert done.stderr == ("convlearn: error: --store postgresql+pg8000://me:***@127.0.0.1:1/db: the database "
                           "driver 'pg8000' is not installed (pip install 'convlearn[postgres]' for PostgreSQL)\n")
