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

from ..errors import UserError
from ..store import Store, default_url
from .api import Limits, create_app
from .engine import ModelHolder, TransformersEngine

BASE_VERSION = "v0"


def resolve_model(target: str) -> str:
    """A model folder, a training run's final model, or a hub id (left to from_pretrained)."""
    path = Path(target)
    if path.is_dir():
        if (path / "config.json").exists() or (path / "adapter_config.json").exists():
            return str(path.resolve())
        final = path / "final"
        if final.exists():
            return str(final.resolve())
        raise UserError(f"{target}: neither a model folder (config.json) nor a run with a final model (final/); "
                        f"`convlearn export RUN --out DIR` makes a model folder from any checkpoint")
    if path.exists():
        raise UserError(f"{target}: a file; serve takes a model folder, a run directory or a hub id")
    return target


def default_dir(target: str) -> Path:
    """A learner or run directory serves from itself; a model from ./convlearn-live."""
    path = Path(target)
    if path.is_dir() and ((path / "store.sqlite").exists() or (path / "final").exists()):
        return path
    return Path("convlearn-live")


def open_store(folder: str | Path | None, url: str | None) -> Store:
    return Store(url or default_url(folder or "convlearn-live"))


def ensure_base(store: Store, target: str) -> dict:
    """The version to serve: the store's current one, or (first start) `target` recorded as v0."""
    current = store.current_version()
    if current is not None:
        return current
    if store.version(BASE_VERSION) is None:
        store.record_version({"id": BASE_VERSION, "parent": None, "status": "base", "path": resolve_model(target)},
                             make_current=True)
    else:
        store.set_current(BASE_VERSION)
    return store.current_version()


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
          device: str = "auto", poll_s: float = 2.0, host: str = "127.0.0.1", port: int = 8000):
    import uvicorn
    folder = Path(folder) if folder else default_dir(target)
    store = open_store(folder, store_url)
    first = ensure_base(store, target)
    holder = ModelHolder(lambda v: TransformersEngine(v["path"], v["id"], device), first)
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
          host: str, port: int) -> None:
    server, holder, store = build(target, folder, store_url, limits, device, poll_s, host, port)
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
