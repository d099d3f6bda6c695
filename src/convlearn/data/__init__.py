"""Conversation data: read any source, normalize, filter, split, render to token ids + masks, cache."""
from .records import Conversation, DataStats, Document, Message, Skip, SKIP_REASONS

__all__ = ["Conversation", "DataStats", "Document", "Message", "Skip", "SKIP_REASONS"]
