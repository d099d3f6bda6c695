"""Rendering with each family's chat template: exact masks, windows, token splits, packing, pairs."""
import pytest

from convlearn.data.records import Conversation, Message
from convlearn.data.render import ChatRenderer, pack
from convlearn.models import FAMILIES
from helpers import ARCHS

CLOSER = {"qwen2": "<|im_end|>", "llama": "<|eot_id|>", "gemma2": "<end_of_turn>", "gemma3_text": "<end_of_turn>",
          "phi3": "<|end|>"}


def conversation(n_exchanges=2, system=True, long_answer=None):
    msgs = [Message("system", "You answer briefly.")] if system else []
    for i in range(n_exchanges):
        msgs.append(Message("user", f"Question {i}: what is über-naïve {i * 7}? 😀"))
        msgs.append(Message("assistant", long_answer if (long_answer and i == 0) else
                            f"Answer {i}: it is a word, see (x+{i})."))
    return Conversation("c1", "test", msgs, "en", "words")


def renderer(tokenizers, arch, max_seq_len=100_000, **kw):
    return ChatRenderer(tokenizers[arch], max_seq_len, template_kwargs=FAMILIES[arch].template_kwargs, **kw)


def masked(tok, ids, mask):
    return tok.decode([i for i, m in zip(ids, mask) if m])


@pytest.mark.parametrize("arch", ARCHS)
def test_assistant_mask_decodes_to_the_assistant_messages(tokenizers, arch):
    tok, conv = tokenizers[arch], conversation(3)
    r = renderer(tokenizers, arch)
    (s,) = r.render(conv)
    answers = [m.content for m in conv.messages if m.role == "assistant"]
    assert masked(tok, s.input_ids, s.assistant_mask) == "".join(a + CLOSER[arch] for a in answers)
    assert s.token_mask.sum() == len(s.input_ids)  # loss: all = every token of a one-window conversation
    # the ids are exactly what the template + tokenizer produce for the same messages
    text = tok.apply_chat_template(r.messages(conv), tokenize=False, **FAMILIES[arch].template_kwargs)
    assert s.input_ids.tolist() == tok(text, add_special_tokens=False)["input_ids"]
    assert s.token_bytes.sum() == len(text.encode("utf-8"))


def test_system_role_detection_and_folding(tokenizers):
    assert [renderer(tokenizers, a).system_role for a in ARCHS] == [True, True, False, True, True]
    msgs = renderer(tokenizers, "gemma2").messages(conversation(1))
    assert msgs[0] == {"role": "user", "content": "You answer briefly.\n\nQuestion 0: what is über-naïve 0? 😀"}


def test_system_prompt_added_only_where_missing(tokenizers):
    r = renderer(tokenizers, "qwen2", system_prompt="Be kind.")
    assert r.messages(conversation(1, system=False))[0] == {"role": "system", "content": "Be kind."}
    assert r.messages(conversation(1))[0]["content"] == "You answer briefly."


@pytest.mark.parametrize("arch", ARCHS)
def test_long_conversation_is_windowed_at_turn_boundaries(tokenizers, arch):
    tok, conv = tokenizers[arch], conversation(12)
    full = renderer(tokenizers, arch).render(conv)[0]
    r = renderer(tokenizers, arch, max_seq_len=len(full.input_ids) // 3)
    windows = r.render(conv)
    assert len(windows) >= 3 and all(len(w.input_ids) <= r.max_seq_len for w in windows)
    assert [w.window for w in windows] == list(range(len(windows)))
    # every assistant message is trained exactly once across the windows, in order
    answers = [m.content for m in conv.messages if m.role == "assistant"]
    got = "".join(masked(tok, w.input_ids, w.assistant_mask) for w in windows)
    assert got == "".join(a + CLOSER[arch] for a in answers)
    # later windows carry preceding context that is not trained again
    assert any(w.token_mask.sum() < len(w.input_ids) for w in windows[1:])
    assert r.stats.counts["conversations_windowed"] == 1 and "turns_split_by_tokens" not in r.stats.counts
    assert r.stats.counts["window_estimates_redone"] == 0
    assert sum(w.assistant_mask.sum() for w in windows) == full.assistant_mask.sum()


def test_single_turn_longer_than_window_is_split_by_tokens(tokenizers):
    tok = tokenizers["qwen2"]
    long = " ".join(f"word{i}" for i in range(300))
    conv = conversation(2, long_answer=long)
    full = renderer(tokenizers, "qwen2").render(conv)[0]
    r = renderer(tokenizers, "qwen2", max_seq_len=128)
    samples = r.render(conv)
    assert all(len(s.input_ids) <= 128 for s in samples)
    assert r.stats.counts["turns_split_by_tokens"] == 1
    got = "".join(masked(tok, s.input_ids, s.assistant_mask) for s in samples)
    assert got == long + "<|im_end|>" + "Answer 1: it is a word, see (x+1).<|im_end|>"
    assert sum(s.assistant_mask.sum() for s in samples) == full.assistant_mask.sum()


def test_masks_never_empty_on_the_bundled_corpus(tokenizers):
    from convlearn.config import DataConfig, SourceConfig
    from convlearn.data.records import DataStats
    from convlearn.data.stream import iter_records
    convs = [k.record for k in iter_records(DataConfig(sources=[SourceConfig(path="chatterbot")]), DataStats())]
    for arch in ARCHS:
        r = renderer(tokenizers, arch, max_seq_len=256)
        for conv, samples in zip(convs, r.render_many(convs)):
            assert sum(s.assistant_mask.sum() for s in samples) > 0, (arch, conv.id)
            assert all(len(s.input_ids) <= 256 for s in samples)


def test_pack_keeps_masks_and_order(tokenizers):
    r = renderer(tokenizers, "llama")
    samples = [s for i in range(1, 6) for s in r.render(conversation(i))]
    rows = pack(samples, 400)
    assert all(len(row["input_ids"]) <= 400 for row in rows)
    assert sum(len(row["lengths"]) for row in rows) == len(samples)
    for key in ("input_ids", "token_mask", "assistant_mask", "token_bytes"):
        assert [x for row in rows for x in row[key].tolist()] == [x for s in samples
                                                                  for x in getattr(s, key).tolist()]


@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_response_pairs(tokenizers, arch):
    r = renderer(tokenizers, arch)
    conv = conversation(2)
    pairs = r.prompt_response_pairs(conv)
    assert [p["reference"] for p in pairs] == [m.content for m in conv.messages if m.role == "assistant"]
    full = r.render_text(r.messages(conv)).text
    for p in pairs:
        assert (full.startswith(p["prompt"] + p["reference"]))


@pytest.mark.parametrize("arch", ARCHS)
def test_byte_length_table_agrees_with_offsets(tokenizers, arch):
    """The fast path (per-id byte lengths) and the offsets path give the same masks and byte counts."""
    from convlearn.data.tokens import TokenEncoder, span_mask
    r = renderer(tokenizers, arch)
    rendered = r.render_text(r.messages(conversation(3)))
    fast_enc = TokenEncoder(tokenizers[arch])
    fast = fast_enc.encode([rendered.text])[0]
    assert fast_enc.fallbacks == 0
    slow_enc = TokenEncoder(tokenizers[arch])
    slow_enc.table_usable = False
    slow = slow_enc.encode([rendered.text])[0]
    assert slow_enc.fallbacks == 1 and fast.ids.tolist() == slow.ids.tolist()
    assert fast.nbytes.sum() == slow.nbytes.sum() == len(rendered.text.encode())
    spans = [(s[1], s[3]) for s, role in zip(rendered.byte_spans(), rendered.roles) if role == "assistant"]
    assert span_mask(fast, spans).tolist() == span_mask(slow, spans).tolist()


def test_text_the_normalizer_would_change_takes_the_offsets_path(tokenizers):
    from convlearn.data.tokens import TokenEncoder
    enc = TokenEncoder(tokenizers["qwen2"])  # Qwen2 normalizes to NFC
    (e,) = enc.encode(["cafe\u0301 au lait"])  # decomposed é: NFC changes it
    assert enc.fallbacks == 1 and e.nbytes.sum() == len("cafe\u0301 au lait".encode())


HEADERS = {"qwen2": "assistant", "llama": "assistant", "gemma2": "model", "gemma3_text": "model",
           "phi3": "<|assistant|>"}


@pytest.mark.parametrize("arch", ARCHS)
def test_tokens_straddling_the_header_are_not_assistant_tokens(tokenizers, arch):
    """Content that starts with a newline or spaces merges with the header's last characters (Qwen's `\\n`,
    SentencePiece's `model\\n` + a letter, Phi-3's rstrip role tokens): such a token belongs to the header."""
    tok, r = tokenizers[arch], renderer(tokenizers, arch)
    for content in ("\nHello there.", "   spaced answer", "\n\n- a list\n- of items", "Plain answer."):
        msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": content}]
        rendered = r.render_text(msgs)
        enc = r.encoder.encode([rendered.text])[0]
        _, c0, c1, end = rendered.byte_spans()[1]
        sample = r._sample(Conversation("x", "t", []), rendered, enc, 0, 0)
        expected = [int(c0 <= s < end and e > s) for s, e in zip(enc.start, enc.end)]
        assert sample.assistant_mask.tolist() == expected
        assert HEADERS[arch] not in masked(tok, enc.ids, sample.assistant_mask)
        assert rendered.text == tok.apply_chat_template(msgs, tokenize=False, **FAMILIES[arch].template_kwargs)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3_text"])
def test_templates_that_trim_are_trimmed_exactly_for_every_conversation(tokenizers, arch):
    tok, r = tokenizers[arch], renderer(tokenizers, arch)
    assert r.trimmed_roles >= {"user", "assistant"}
    for i in range(6):  # well past the old "first three are checked" window
        msgs = [{"role": "user", "content": f"  question {i}\n"}, {"role": "assistant", "content": f" answer {i}  "}]
        rendered = r.render_text(msgs)
        assert rendered.text == tok.apply_chat_template(msgs, tokenize=False, **FAMILIES[arch].template_kwargs)
        enc = r.encoder.encode([rendered.text])[0]
        sample = r._sample(Conversation("x", "t", []), rendered, enc, 0, 0)
        assert masked(tok, enc.ids, sample.assistant_mask) == f"answer {i}" + CLOSER[arch]


def test_qwen_and_phi_do_not_trim(tokenizers):
    assert renderer(tokenizers, "qwen2").trimmed_roles == set() == renderer(tokenizers, "phi3").trimmed_roles


def test_phi3_twin_behaves_like_the_real_tokenizer_and_template(tokenizers):
    tok, r = tokenizers["phi3"], renderer(tokenizers, "phi3")
    rstrip = {t.content: t.rstrip for t in tok.added_tokens_decoder.values()}
    assert all(rstrip[t] for t in ("<|assistant|>", "<|user|>", "<|end|>", "<|system|>"))
    assert not rstrip["<|endoftext|>"]
    # `<|end|>\n` is one token, as in the real tokenizer
    assert tok("<|end|>\n", add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids("<|end|>")]
    # an empty system message is dropped by Phi-3.5's template, and so by the renderer
    msgs = [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}]
    rendered = r.render_text(msgs)
    assert rendered.text == tok.apply_chat_template(msgs, tokenize=False) and "<|system|>" not in rendered.text
    enc = r.encoder.encode([rendered.text])[0]
    sample = r._sample(Conversation("x", "t", []), rendered, enc, 0, 0)
    assert masked(tok, enc.ids, sample.assistant_mask) == "Hello.<|end|>"
    assert sum(enc.nbytes) == len(rendered.text.encode())  # bytes per token still add up (offsets path)


def test_qwen_injects_its_default_system_prompt_outside_the_mask(tokenizers):
    tok, r = tokenizers["qwen2"], renderer(tokenizers, "qwen2")
    (s,) = r.render(conversation(1, system=False))
    text = tok.decode(s.input_ids)
    assert "You are Qwen, created by Alibaba Cloud." in text
    assert "Qwen" not in masked(tok, s.input_ids, s.assistant_mask)


@pytest.mark.parametrize("arch", ARCHS)
def test_documents_start_with_bos_where_the_tokenizer_starts_text_with_one(tokenizers, arch):
    """Plain text is scored as the model was pretrained on it: Gemma and Llama tokenizers put BOS first (a Gemma
    base without it scores text ~10x worse); Qwen2 has no BOS and Phi-3's adds none, so nothing is added."""
    from convlearn.data.records import Document
    tok = tokenizers[arch]
    (s,), = renderer(tokenizers, arch).render_documents([Document("d", "t", "Plain text, as pretraining saw it.")])
    adds = tok.bos_token_id is not None and tok("a")["input_ids"][:1] == [tok.bos_token_id]
    assert adds == (arch in ("llama", "gemma2", "gemma3_text"))
    expected = tok(("" if not adds else tok.bos_token) + "Plain text, as pretraining saw it." + (tok.eos_token or ""),
                   add_special_tokens=False)["input_ids"]
    assert s.input_ids.tolist() == expected and s.token_mask.all() and not s.assistant_mask.any()
