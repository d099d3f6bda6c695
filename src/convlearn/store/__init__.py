"""The conversation store (SQLite in WAL mode by default, any SQLAlchemy URL): the channel between the server
and the learner. Depends on nothing of convlearn but its errors."""
from .export import export_conversations
from .layout import RoundDir, ServeDir
from .pointers import CURRENT, Forgotten, Version
from .schema import StoreUnavailable
from .store import ApiKey, Store, default_url, history_hash, open_store

__all__ = ["CURRENT", "ApiKey", "Forgotten", "RoundDir", "ServeDir", "Store", "StoreUnavailable", "Version",
           "default_url", "export_conversations", "history_hash", "open_store"]
