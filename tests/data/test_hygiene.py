from collections import Counter

import pytest

from convlearn.data.hygiene import language_code, scrub_text
from convlearn.data.normalize import html_to_text, normalize_messages
from convlearn.data.records import Skip
from convlearn.data.splits import is_heldout


@pytest.mark.parametrize("text,expected,kinds", [
    ("write to a.b-c+tag@mail.example.co.uk now", "write to <EMAIL> now", {"email": 1}),
    ("OPENAI_API_KEY=sk-proj-AbCdEfGhIjKlMnOpQrStUv12", "OPENAI_API_KEY=<API_KEY>", {"api_key": 1}),
    ("aws AKIAIOSFODNN7EXAMPLE and ghp_" + "a" * 36, "aws <API_KEY> and <API_KEY>", {"api_key": 2}),
    ("hf_" + "x" * 34 + " xoxb-1234567890-abc", "<API_KEY> <API_KEY>", {"api_key": 2}),
    ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz0123", "Authorization: Bearer <TOKEN>", {"token": 1}),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
     "jwt <TOKEN>", {"token": 1}),
    ("ping 10.0.0.255 or 2001:0db8:85a3:0000:0000:8a2e:0370:7334 or fe80::1ff:fe23:4567:890a",
     "ping <IP_ADDRESS> or <IP_ADDRESS> or <IP_ADDRESS>", {"ip_address": 3}),
    ("call (415) 555-0100 or +44 20 7946 0958", "call <PHONE> or <PHONE>", {"phone": 2}),
    # the gaps found by planting secrets in the prepared cache, each under its own name
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws_secret_access_key = <AWS_SECRET>",
     {"aws_secret": 1}),
    ("call 020 7946 0958 or 4155552671", "call <PHONE> or <PHONE>", {"phone": 2}),
    ("bind ::1 and ::ffff:192.0.2.1", "bind <IP_ADDRESS> and <IP_ADDRESS>", {"ip_address": 2}),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nAAAB\n-----END OPENSSH PRIVATE KEY----- ok",
     "<PRIVATE_KEY> ok", {"private_key": 1}),
    ("pay with 4111 1111 1111 1111 or 5500-0000-0000-0004", "pay with <CREDIT_CARD> or <CREDIT_CARD>",
     {"credit_card": 2}),
    ("IBAN GB82 WEST 1234 5698 7654 32, DE89370400440532013000", "IBAN <IBAN>, <IBAN>", {"iban": 2}),
    ("my SSN is 123-45-6789.", "my SSN is <SSN>.", {"ssn": 1}),
])
def test_scrubber_replaces_with_typed_placeholders(text, expected, kinds):
    counts = Counter()
    assert scrub_text(text, counts) == expected
    assert dict(counts) == kinds


@pytest.mark.parametrize("text", [
    "Released on 2023-10-05 at 12:30:45, version 3.11.7, pi = 3.14159, 1,000,000 users",
    "std::vector<int> x; a.b = c; use @decorator and user@localhost",
    "ISBN 978-3-16-148410-0 and the year 1999",
    "a[::1], a[::-1], std::cout, 4111-1111-1111-1112 (Luhn fails), GB82WEST12345698765433 (mod 97 fails)",
    "invalid SSNs 000-12-3456 and 666-45-6789; order 1234567890123; unix time 1699999999",
])
def test_scrubber_leaves_ordinary_text_alone(text):
    counts = Counter()
    assert scrub_text(text, counts) == text and not counts


def test_heldout_split_is_deterministic_and_proportional():
    ids = [f"conv-{i}" for i in range(20000)]
    first = [is_heldout(i, 0.1) for i in ids]
    assert first == [is_heldout(i, 0.1) for i in ids]
    assert 0.09 < sum(first) / len(ids) < 0.11
    # growing the fraction only moves conversations into held-out, never out of it
    assert all(is_heldout(i, 0.2) for i, h in zip(ids, first) if h)
    assert not any(is_heldout(i, 0.0) for i in ids[:100])


@pytest.mark.parametrize("raw,code", [("English", "en"), ("en", "en"), ("en-US", "en"), ("PT_br", "pt"),
                                      ("unknown", "unknown"), (None, None), ("", None)])
def test_language_codes(raw, code):
    assert language_code(raw) == code


def test_normalization_rules_and_edit_counts():
    edits = Counter()
    msgs = normalize_messages([("assistant", "hi!"), ("system", "sys"), ("user", " a "), ("user", "b"),
                               ("assistant", ""), ("assistant", "c"), ("system", "late")], edits)
    assert [(m.role, m.content) for m in msgs] == [("system", "sys"), ("user", "a\n\nb"), ("assistant", "c")]
    assert edits == {"leading_assistant_dropped": 1, "same_role_merged": 1, "empty_message_dropped": 1,
                     "late_system_message_dropped": 1}
    with pytest.raises(Skip) as e:
        normalize_messages([("user", "q"), ("user", "q2")], edits)
    assert e.value.reason == "no_exchange"


def test_html_to_text_keeps_code_and_lists():
    html = "<div><p>Steps:</p><ol><li>a &amp; b</li><li>c<br>d</li></ol><pre><code>x = 1\ny = 2</code></pre></div>"
    assert html_to_text(html) == "Steps:\n\n- a & b\n\n- c\nd\n\n```\nx = 1\ny = 2\n```"
