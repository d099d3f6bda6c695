"""Conversation data: read any source, normalize, filter, split, render to token ids + masks, cache."""
from .records import SKIP_REASONS, Conversation, DataStats, Document, Message, Skip

__all__ = ["Conversation", "DataStats", "Document", "Message", "Skip", "SKIP_REASONS"]
