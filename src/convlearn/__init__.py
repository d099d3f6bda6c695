"""convlearn: continual learning of chat LLMs from their conversations."""

__version__ = "0.1.0"
