"""What the serve tests share besides their fixture (tests/serve/conftest.py): clients of a running server."""
from __future__ import annotations

import json

import httpx
import openai


def client(live, key="private") -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key=live.keys[key], max_retries=0, timeout=60)


def post(live, body, key="private", **headers) -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(live.url + "/v1/chat/completions", content=data, timeout=60,
                      headers={"Authorization": f"Bearer {live.keys[key]}", "Content-Type": "application/json",
                               **headers})


def hello(text="hello there") -> list[dict]:
    return [{"role": "user", "content": text}]
