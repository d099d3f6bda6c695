"""Filters and hygiene: language allow-list, moderation, length, exact dedup, and a scrubber for secrets and
personal data. (The held-out split is data/splits.py.)"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from typing import TYPE_CHECKING

from .records import Conversation, Document, Skip

if TYPE_CHECKING:
    from ..config import DataConfig

_LANGUAGE_CODES = {
    "english": "en", "spanish": "es", "portuguese": "pt", "french": "fr", "german": "de", "chinese": "zh",
    "russian": "ru", "japanese": "ja", "korean": "ko", "italian": "it", "arabic": "ar", "vietnamese": "vi",
    "polish": "pl", "dutch": "nl", "turkish": "tr", "indonesian": "id", "ukrainian": "uk", "persian": "fa",
    "hindi": "hi", "czech": "cs", "swedish": "sv", "greek": "el", "hebrew": "he", "thai": "th",
    "romanian": "ro", "hungarian": "hu", "danish": "da", "finnish": "fi", "norwegian": "no", "catalan": "ca",
    "bengali": "bn", "malay": "ms", "tagalog": "tl", "latin": "la", "basque": "eu", "esperanto": "eo",
}


def language_code(lang: str | None) -> str | None:
    """`English` / `en` / `en-US` / `EN` -> `en`; unknown names are lower-cased as they are."""
    if not lang or not isinstance(lang, str):
        return None
    s = lang.strip().lower()
    if s in _LANGUAGE_CODES:
        return _LANGUAGE_CODES[s]
    return re.split(r"[-_]", s)[0] if re.fullmatch(r"[a-z]{2,3}([-_][a-z0-9]+)?", s) else s


def detect_language(text: str) -> str | None:
    """The language of a text (py3langid: a small offline classifier), for records whose source gives none."""
    import py3langid  # ~0.3 s to load its model: only where a language is detected
    return py3langid.classify(text[:2000])[0] if text.strip() else None


class RecordFilter:
    """Language, moderation and length filters plus exact dedup, configured from a DataConfig."""

    def __init__(self, data_cfg: DataConfig) -> None:
        self.languages = {language_code(x) for x in data_cfg.languages}
        self.keep_unknown_language = data_cfg.keep_unknown_language
        self.drop_flagged = data_cfg.drop_flagged
        self.min_chars = data_cfg.min_chars
        self.max_chars = data_cfg.max_chars
        self.dedup = data_cfg.dedup
        self._seen: set[bytes] = set()

    def check(self, rec: Conversation | Document) -> None:
        """Raise Skip(reason) if the record must not be kept."""
        if self.languages:
            code = language_code(rec.language)
            if code is None:
                if not self.keep_unknown_language:
                    raise Skip("language", "unknown")
            elif code not in self.languages:
                raise Skip("language", code)
        if self.drop_flagged and rec.meta.get("flagged"):
            raise Skip("moderation")
        n = rec.chars()
        if n < self.min_chars:
            raise Skip("too_short", str(n))
        if self.max_chars is not None and n > self.max_chars:
            raise Skip("too_long", str(n))
        if self.dedup:
            key = dedup_key(rec)
            if key in self._seen:
                raise Skip("duplicate", rec.id)
            self._seen.add(key)

    def remember(self, rec: Conversation | Document) -> None:
        """A record kept elsewhere: a later record with its roles and text is a duplicate."""
        if self.dedup:
            self._seen.add(dedup_key(rec))


def dedup_key(rec: Conversation | Document) -> bytes:
    """Roles and text with whitespace collapsed and case folded."""
    if isinstance(rec, Document):
        parts = [" ".join(rec.text.casefold().split())]
    else:
        parts = [m.role + "\x1f" + " ".join(m.content.casefold().split()) for m in rec.messages]
    return hashlib.blake2b("\x1e".join(parts).encode("utf-8", "surrogatepass"), digest_size=16).digest()


# Ordered: keys and tokens before e-mails (a JWT has dots), IPs before phones (an IP is digits and dots).
# Each pattern has a cheap gate (substring tests run at C speed) and starts with a plain character class, so
# the regex engine can skip ahead; context rules that would need a leading look-behind (which defeats that
# skipping: scrubbing was 80% of read time) are checked by a validator on the few matches instead.
def _not_after(chars: str):
    """Validator: the match must not continue a longer number or identifier to its left."""
    def ok(m: re.Match, text: str) -> bool:
        return m.start() == 0 or text[m.start() - 1] not in chars
    return ok


def _ip_address(m: re.Match, text: str) -> bool:
    quad = m.group(0).rsplit(":", 1)[-1]
    if quad.count(".") == 3 and any(int(x) > 255 for x in quad.split(".")):
        return False
    return _not_after("0123456789.:abcdefABCDEF_[")(m, text)  # `[` : a Python slice `a[::1]`


def _luhn(m: re.Match, text: str) -> bool:
    """A card number: 13-19 digits whose Luhn checksum holds (and not part of a longer number)."""
    digits = [int(c) for c in m.group(0) if c.isdigit()]
    if not 13 <= len(digits) <= 19 or not _not_after(_WORD)(m, text):
        return False
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


def _iban(m: re.Match, text: str) -> bool:
    """An IBAN: country code, check digits and account, whose mod-97 check holds."""
    s = m.group(0).replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


_WORD = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
_SCRUB_PATTERNS: list[tuple[str, str, tuple[str, ...], re.Pattern, object]] = [
    # kind, placeholder, gate substrings (any must occur), pattern, validator of a match (or None)
    ("api_key", "<API_KEY>", ("sk-", "AKIA", "gh", "github_pat_", "xox", "AIza", "hf_", "_live_", "_test_"),
     re.compile(r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}"
                r"|github_pat_[A-Za-z0-9_]{22,}|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}"
                r"|hf_[A-Za-z0-9]{30,}|(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,})"), None),
    ("token", "<TOKEN>", ("eyJ", "earer "),
     re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
                r"|(?<=[Bb]earer )[A-Za-z0-9._~+/-]{20,}=*"), None),
    ("private_key", "<PRIVATE_KEY>", ("PRIVATE KEY",),
     re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"), None),
    ("aws_secret", "<AWS_SECRET>", ("ecret", "ECRET"),
     re.compile(r"(?i:aws_?secret_?access_?key|aws_?secret_?key|secret_?access_?key)[\"']?\s*[:=]\s*[\"']?"
                r"(?P<secret>[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"), None),
    ("email", "<EMAIL>", ("@",),
     re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"), None),
    ("credit_card", "<CREDIT_CARD>", tuple("0123456789"),
     re.compile(r"\d(?:[ -]?\d){12,18}(?![\d])"), _luhn),
    ("iban", "<IBAN>", tuple("0123456789"),
     re.compile(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])"), _iban),
    ("ssn", "<SSN>", ("-",),
     re.compile(r"(?!000|666|9)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])"), _not_after(_WORD + "-")),
    ("ip_address", "<IP_ADDRESS>", (".", ":"),
     re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\d.])"
                r"|[0-9A-Fa-f]{1,4}:(?:[0-9A-Fa-f]{1,4}:){6}[0-9A-Fa-f]{1,4}(?![\w:])"
                r"|[0-9A-Fa-f]{1,4}:(?:[0-9A-Fa-f]{1,4}:){0,5}:(?:[0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4}"
                r"(?![\w:])|::1(?![\w:.])|::ffff:\d{1,3}(?:\.\d{1,3}){3}(?![\d.])"), _ip_address),
    ("phone", "<PHONE>", tuple("0123456789"),
     re.compile(r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,3}(?!\w)"
                r"|(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\w)"
                r"|0\d{2,4}[ -]\d{3,4}[ -]\d{3,4}(?![\w-])"            # UK style: 020 7946 0958
                r"|[2-9]\d{2}[2-9]\d{6}(?!\w)"), _not_after(_WORD + "+(-.")),  # US digits only: 4155552671
]


def scrub_text(text: str, counts: Counter) -> str:
    """Replace secrets and personal data with typed placeholders; count replacements per kind."""
    for kind, placeholder, gates, pattern, valid in _SCRUB_PATTERNS:
        if not any(g in text for g in gates):
            continue
        n = 0

        def replace(m: re.Match, text: str = text) -> str:
            nonlocal n
            if valid is not None and not valid(m, text):
                return m.group(0)
            n += 1
            if "secret" in m.groupdict():  # keep the label, replace the value
                return m.group(0)[:m.start("secret") - m.start()] + placeholder
            return placeholder
        text = pattern.sub(replace, text)
        if n:
            counts[kind] += n
    return text


def scrub(rec: Conversation | Document, counts: Counter) -> None:
    if isinstance(rec, Document):
        rec.text = scrub_text(rec.text, counts)
    else:
        for m in rec.messages:
            m.content = scrub_text(m.content, counts)
