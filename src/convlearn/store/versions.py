"""What a version is on disk, and the base version a store starts from (shared by the server and the learner)."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .pointers import Version

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
        raise UserError(f"{target}: a file; a model folder, a run directory or a hub id is needed")
    return target


def ensure_base(store, target: str) -> Version:
    """The version to serve or learn from: the store's current one, or (a new store) `target` recorded as v0."""
    current = store.current_version()
    if current is not None:
        return current
    if store.version(BASE_VERSION) is None:
        store.record_version(Version(BASE_VERSION, "base", resolve_model(target)), make_current=True)
    else:
        store.set_current(BASE_VERSION)
    return store.current_version()
