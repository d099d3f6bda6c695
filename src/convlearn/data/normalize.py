"""The normalization rules every source shares, and the HTML-to-text conversion ShareGPT dumps need."""
from __future__ import annotations

import re
from collections import Counter
from html.parser import HTMLParser

from .records import Conversation, Message, Skip

# Role names seen across sources -> our three roles.
ROLE_MAP = {
    "system": "system",
    "user": "user", "human": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "chatgpt": "assistant", "bing": "assistant",
    "bard": "assistant", "model": "assistant", "bot": "assistant",
}


def map_role(raw: object) -> str:
    if not isinstance(raw, str):
        raise Skip("wrong_type", f"role is {type(raw).__name__}")
    role = ROLE_MAP.get(raw.strip().lower())
    if role is None:
        raise Skip("unknown_role", raw[:40])
    return role


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str, edits: Counter) -> str:
    """Text every later stage can encode: lone surrogates (a JSON `\\ud800` escape with no pair; UTF-8 cannot
    hold them, tokenizers refuse them) become U+FFFD, counted as an edit."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        fixed, n = _SURROGATE.subn("\ufffd", text)
        edits["lone_surrogate_replaced"] += n
        return fixed


def normalize_messages(pairs: list[tuple[str, str]], edits: Counter) -> list[Message]:
    """Apply the shared rules to (role, text) pairs whose roles are already mapped.

    Whitespace-only messages are dropped, text is stripped, consecutive messages of one role are merged,
    leading assistant messages are dropped, a system message is kept only at the start. The conversation
    must then hold a user message followed by an assistant message, else Skip("no_exchange").
    Every change to a kept conversation is counted in `edits`.
    """
    out: list[Message] = []
    changes: Counter = Counter()  # merged into `edits` only if the conversation is kept
    for role, text in pairs:
        if not isinstance(text, str):
            raise Skip("wrong_type", f"message text is {type(text).__name__}")
        text = clean_text(text, changes).strip()
        if not text:
            changes["empty_message_dropped"] += 1
            continue
        if role == "system" and any(m.role != "system" for m in out):
            changes["late_system_message_dropped"] += 1
            continue
        if out and out[-1].role == role:
            out[-1].content += "\n\n" + text
            changes["same_role_merged"] += 1
            continue
        if role == "assistant" and all(m.role == "system" for m in out):
            changes["leading_assistant_dropped"] += 1
            continue
        out.append(Message(role, text))
    if not out:
        raise Skip("empty")
    if not any(a.role == "user" and b.role == "assistant" for a, b in zip(out, out[1:])):
        raise Skip("no_exchange")
    edits.update(changes)
    return out


def make_conversation(cid: str, source: str, pairs: list[tuple[str, str]], edits: Counter,
                      language: str | None = None, domain: str | None = None,
                      meta: dict | None = None) -> Conversation:
    return Conversation(str(cid), source, normalize_messages(pairs, edits), language, domain, meta or {})


_HTML_START = re.compile(r"\s*<(div|p|ol|ul|pre|h[1-6]|table|blockquote)\b", re.I)
_BLOCK = {"p", "div", "pre", "ol", "ul", "li", "table", "tr", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6"}


def looks_like_html(text: str) -> bool:
    return bool(_HTML_START.match(text)) and "</" in text


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        if tag == "br":
            self.parts.append("\n")
        elif tag in _BLOCK:
            self.parts.append("\n")
            if tag == "li":
                self.parts.append("- ")
            if tag == "pre":
                self.pre += 1
                self.parts.append("```\n")

    def handle_endtag(self, tag):
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
            self.parts.append("\n```\n")
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        self.parts.append(data)


def html_to_text(html: str) -> str:
    """ShareGPT's older dumps hold rendered HTML; turn it into text with paragraphs and code blocks."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
