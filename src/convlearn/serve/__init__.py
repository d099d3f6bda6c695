"""Serving: an OpenAI-compatible API over one model version at a time (api.py), generation behind a small
engine interface with hot swap (engine.py), and the command that puts them together (server.py)."""
