"""`convlearn serve`: what to serve, the store beside it, and uvicorn.

The serve directory (`--dir`) holds the store (`store.sqlite`, unless `--store` names another database) and,
once the learner runs, its versions (`versions/`). The model served is the store's current version; on a
store's first start that is version `v0`, the model named on the command line (a hub id, a model folder, or a
training run's final model). The server then follows the store's current-version pointer: a version the learner
promotes, or one `convlearn rollback` names, is loaded beside the serving one and swapped in between requests.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from ..store import ServeDir, Store, open_store
from ..store.versions import ensure_base
from .api import Limits, create_app
from .engine import ModelHolder, TransformersEngine


def default_dir(target: str) -> Path:
    """A learner or run directory serves from itself; a model from ./convlearn-live."""
    path = Path(target)
    if path.is_dir() and (ServeDir.holds_store(path) or (path / "final").exists()):
        return path
    return Path("convlearn-live")


@dataclass
class Server:
    """A running server (uvicorn in a thread): for tests, benchmarks and the live demo."""
    server: object
    thread: threading.Thread
    holder: ModelHolder
    store: Store
    url: str

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.holder.close()


def build(target: str, folder: str | Path | None = None, store_url: str | None = None, limits: Limits | None = None,
          device: str = "auto", poll_s: float = 2.0, host: str = "127.0.0.1", port: int = 8000,
          precision: str = "auto"):
    import uvicorn
    folder = Path(folder) if folder else default_dir(target)
    store = open_store(folder, store_url)
    store.check_writable()
    first = ensure_base(store, target)
    holder = ModelHolder(lambda v: TransformersEngine(v.path, v.id, device, precision), first)
    holder.watch(store.current_version, poll_s)
    app = create_app(holder, store, limits or Limits())
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    return uvicorn.Server(config), holder, store


def start_in_thread(target: str, port: int, **kwargs) -> Server:
    """Serve from a thread of this process; returns once the server accepts connections."""
    server, holder, store = build(target, port=port, **kwargs)
    thread = threading.Thread(target=server.run, name="convlearn-serve", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the server did not start on port {port}")
        thread.join(0.05)
    return Server(server, thread, holder, store, f"http://127.0.0.1:{port}")


def serve(target: str, folder: str | None, store_url: str | None, limits: Limits, device: str, poll_s: float,
          host: str, port: int, precision: str = "auto") -> None:
    server, holder, store = build(target, folder, store_url, limits, device, poll_s, host, port, precision)
    engine = holder.engine()
    counts = store.counts()
    print(f"convlearn serve: version {engine.version} ({engine.folder}) on http://{host}:{port}  "
          f"store {store.url} ({counts['conversations']} conversations, {counts['consented']} consented)",
          flush=True)
    if not store.list_keys():
        print("convlearn serve: the store has no API keys yet: `convlearn keys add NAME` makes one", flush=True)
    try:
        server.run()
    finally:
        holder.close()
