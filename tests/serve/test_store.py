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
