"""Conversation -> token ids + masks, with the model's own chat template.

Masks never depend on `{% generation %}` markers (the official templates lack them). Instead each message's
content is rendered as a unique placeholder, so one template call tells exactly where every message (and the
special token that closes its turn) sits in the rendered text; the text is then tokenized once, and a token
belongs to a message if it *starts* inside the message's span (positions from `tokens.TokenEncoder`): a token
that straddles the header and the content (Qwen's `\n` + a content newline, a SentencePiece `model\n` + the
first letter, Phi-3's `<|assistant|>` swallowing the content's leading whitespace) belongs to the header.

Templates that `| trim` message content (Llama-3, Gemma-2) are detected per role, and the renderer trims exactly
there; a message left empty is rendered as the template renders an empty message (Phi-3.5 drops an empty system
message). Every rendering is checked against the template rendering the real messages (the compiled template
apply_chat_template uses; one extra render, cheap enough for every conversation): a template that changes text
any other way is refused rather than masked wrongly.

Each sample carries two masks, independent of the loss mode:
- `token_mask`: the tokens this sample trains/evaluates in `loss: all` mode (the whole text; in a continuation
  window only the new turns, not the repeated context);
- `assistant_mask`: the assistant messages' tokens plus the token that closes each assistant turn
  (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `<|end|>`), so the model learns to stop.
and `token_bytes` (UTF-8 bytes of text each token adds) for bits-per-byte.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from .records import Conversation, Document, Message
from .tokens import Encoded, TokenEncoder, byte_prefix, span_mask
from .windows import plan_windows

_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")


@dataclass
class Sample:
    input_ids: np.ndarray       # int32
    token_mask: np.ndarray      # int8
    assistant_mask: np.ndarray  # int8
    token_bytes: np.ndarray     # int32
    conversation_id: str
    source: str
    domain: str
    language: str
    window: int = 0            # index of this window within its conversation


@dataclass
class Rendered:
    """A rendered message list: the text, and per message (turn_start, content_start, content_end, end) as
    character positions; `byte_spans` gives the same in UTF-8 bytes."""
    text: str
    spans: list[tuple[int, int, int, int]]
    roles: list[str]

    def byte_spans(self) -> list[tuple[int, ...]]:
        if self.text.isascii():
            return self.spans
        prefix = byte_prefix(self.text)
        return [tuple(int(prefix[p]) for p in span) for span in self.spans]

    def nbytes(self) -> int:
        return len(self.text.encode("utf-8", "surrogatepass"))


@dataclass
class RenderStats:
    conversations: int = 0
    samples: int = 0
    tokens: int = 0
    counts: Counter = field(default_factory=Counter)  # windowed conversations, token splits, ...

    def to_json(self) -> dict:
        return {"conversations": self.conversations, "samples": self.samples, "tokens": self.tokens,
                **dict(sorted(self.counts.items()))}


class ChatRenderer:
    """Renders conversations for one tokenizer + template. `system_role=None` detects template support."""

    def __init__(self, tokenizer, max_seq_len: int, *, system_role: bool | None = None,
                 template_kwargs: dict | None = None, system_prompt: str | None = None,
                 window_context_fraction: float = 0.5):
        self.tok = tokenizer
        self.max_seq_len = max_seq_len
        self.template_kwargs = dict(template_kwargs or {})
        self.system_prompt = system_prompt
        self.context_fraction = window_context_fraction
        self.system_role = self._template_takes_system() if system_role is None else system_role
        specials = {t.content for t in tokenizer.added_tokens_decoder.values()}
        self.specials = sorted(specials, key=len, reverse=True)
        self.encoder = TokenEncoder(tokenizer)
        self._template = _compiled_template(tokenizer)
        self.stats = RenderStats()
        self.trimmed_roles = self._trimmed_roles()

    # -- messages and text ------------------------------------------------------------------------------
    def _template_takes_system(self) -> bool:
        try:
            self._apply([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], False)
            return True
        except Exception:  # the template raises (Gemma: "System role not supported")
            return False

    def _apply(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                            **self.template_kwargs)

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        """The compiled template with the variables apply_chat_template passes (half its cost is copying and
        validating messages we built ourselves); checked against apply_chat_template on the first calls."""
        if self._template is None:
            return self._apply(messages, add_generation_prompt)
        return self._template.render(messages=messages, tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt,
                                     **self.tok.special_tokens_map, **self.template_kwargs)

    def _trimmed_roles(self) -> set[str]:
        """The roles whose content the template strips of surrounding whitespace (`| trim`)."""
        probes = {"user": [{"role": "user", "content": " \ue0000\ue001 "}],
                  "assistant": [{"role": "user", "content": "u"}, {"role": "assistant", "content": " \ue0000\ue001 "}]}
        if self.system_role:
            probes["system"] = [{"role": "system", "content": " \ue0000\ue001 "}, {"role": "user", "content": "u"}]
        out = set()
        for role, msgs in probes.items():
            try:
                text = self._render(msgs, False)
            except Exception:  # a template that refuses the probe (roles must alternate ...): assume no trimming
                continue
            if "\ue0000\ue001" in text and " \ue0000\ue001 " not in text:
                out.add(role)
        return out

    def messages(self, conv: Conversation) -> list[dict]:
        """The conversation as template messages: system prompt added if configured, and folded into the first
        user message for templates without a system role."""
        msgs = [{"role": m.role, "content": m.content} for m in conv.messages]
        if self.system_prompt and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": self.system_prompt})
        if not self.system_role and msgs[0]["role"] == "system":
            system = msgs.pop(0)["content"]
            msgs[0] = {"role": "user", "content": f"{system}\n\n{msgs[0]['content']}"}
        return msgs

    def messages_from(self, raw: list[dict]) -> list[dict]:
        """Template messages for plain {role, content} dicts (system prompt and folding as for records)."""
        return self.messages(Conversation("", "", [Message(m["role"], m["content"]) for m in raw]))

    def generation_prompt(self, msgs: list[dict]) -> str:
        """The rendered prompt a model continues to answer `msgs`."""
        return self._apply(msgs, True)

    def render_text(self, msgs: list[dict], add_generation_prompt: bool = False) -> Rendered:
        # content as the template will show it: trimmed where it trims; an empty message is passed as it is
        contents = [m["content"].strip() if m["role"] in self.trimmed_roles else m["content"] for m in msgs]
        located = [i for i, c in enumerate(contents) if c]
        ph = [{"role": m["role"], "content": f"\ue000{i}\ue001" if contents[i] else m["content"]}
              for i, m in enumerate(msgs)]
        out = self._render(ph, add_generation_prompt)
        pieces = _PLACEHOLDER.split(out)
        order = [int(i) for i in pieces[1::2]]
        if order != located:
            raise UserError("the chat template drops, repeats or reorders messages; convlearn cannot locate "
                            f"them (rendered order {order} for {len(msgs)} messages)")
        text_parts: list[str] = []
        pos = 0
        spans: dict[int, tuple] = {}
        turn_start, previous = 0, None
        for k, scaffold in enumerate(pieces[0::2]):
            text_parts.append(scaffold)
            pos += len(scaffold)
            if previous is not None:  # close the previous message's span with the special token ending its turn
                start, c0, c1 = spans[previous]
                end = c1 + next((len(s) for s in self.specials if scaffold.startswith(s)), 0)
                spans[previous] = (start, c0, c1, end)
                turn_start = end
            if k < len(located):
                i = located[k]
                spans[i] = (turn_start, pos, pos + len(contents[i]))
                text_parts.append(contents[i])
                pos += len(contents[i])
                previous = i
        text = "".join(text_parts)
        # empty messages have no text to mask: a zero-width span where the next located one's turn begins
        full, nxt = [], len(text)
        for i in reversed(range(len(msgs))):
            full.append(spans[i] if i in spans else (nxt, nxt, nxt, nxt))
            nxt = full[-1][0]
        spans_list = full[::-1]
        if self._render([{**m, "content": c} for m, c in zip(msgs, contents)], add_generation_prompt) != text:
            raise UserError("the chat template changes message text (other than trimming it), so masks cannot be "
                            "placed exactly; pre-process the messages the way the template does")
        return Rendered(text, spans_list, [m["role"] for m in msgs])

    # -- tokens and masks --------------------------------------------------------------------------------
    def _sample(self, conv: Conversation, r: Rendered, enc: Encoded, first_new: int, window: int) -> Sample:
        spans = r.byte_spans()
        loss_start = 0 if first_new == 0 else spans[first_new][0]
        token_mask = span_mask(enc, [(loss_start, r.nbytes())])
        assistant_mask = span_mask(enc, [(spans[i][1], spans[i][3]) for i in range(first_new, len(spans))
                                         if r.roles[i] == "assistant"])
        return Sample(enc.ids, token_mask, assistant_mask, enc.nbytes, conv.id, conv.source,
                      conv.domain or conv.source, conv.language or "unknown", window)

    def render(self, conv: Conversation) -> list[Sample]:
        return self.render_many([conv])[0]

    def render_many(self, convs: list[Conversation]) -> list[list[Sample]]:
        """Render a batch (one tokenizer call for all, windows only where a conversation is too long)."""
        rendered = [self.render_text(self.messages(c)) for c in convs]
        encoded = self.encoder.encode([r.text for r in rendered])
        out = []
        for conv, r, enc in zip(convs, rendered, encoded):
            first_new = self._first_new(conv)
            if len(enc.ids) <= self.max_seq_len:
                samples = [self._sample(conv, r, enc, first_new, 0)]
            else:
                samples = self._windows(conv, r, enc, first_new)
            self.stats.conversations += 1
            self.stats.samples += len(samples)
            self.stats.tokens += sum(len(s.input_ids) for s in samples)
            out.append(samples)
        return out

    def _first_new(self, conv: Conversation) -> int:
        """A continued conversation's first message not trained on before (`Conversation.first_trained`), as an
        index into the template messages; earlier messages are context only, as in a window."""
        first_new = conv.first_trained
        if first_new <= 0:
            return 0
        inserted = bool(self.system_prompt) and conv.messages[0].role != "system"
        folded = not self.system_role and (conv.messages[0].role == "system" or inserted)
        return first_new + int(inserted) - int(folded)

    # -- windows for conversations longer than max_seq_len -----------------------------------------------
    def _windows(self, conv: Conversation, full: Rendered, full_enc: Encoded, conv_first_new: int = 0
                 ) -> list[Sample]:
        self.stats.counts["conversations_windowed"] += 1
        msgs = self.messages(conv)
        samples: list[Sample] = []
        for r, enc, first_new, offset in plan_windows(full, full_enc, self, msgs):
            if conv_first_new:  # a continued conversation: only its new messages are trained on
                if len(r.roles) - 1 + offset < conv_first_new:
                    self.stats.counts["windows_before_first_new_dropped"] += 1
                    continue
                first_new = max(first_new, conv_first_new - offset)
            if len(enc.ids) <= self.max_seq_len:
                samples.append(self._sample(conv, r, enc, first_new, len(samples)))
                continue
            # One turn alone is longer than the window: split its tokens; every chunk keeps its masks.
            whole = self._sample(conv, r, enc, first_new, 0)
            self.stats.counts["turns_split_by_tokens"] += 1
            for start in range(0, len(enc.ids), self.max_seq_len):
                sl = slice(start, start + self.max_seq_len)
                if not whole.token_mask[sl].any():
                    self.stats.counts["chunks_without_new_tokens_dropped"] += 1
                    continue
                samples.append(Sample(whole.input_ids[sl], whole.token_mask[sl], whole.assistant_mask[sl],
                                      whole.token_bytes[sl], conv.id, conv.source, whole.domain,
                                      whole.language, len(samples)))
        self.stats.counts["windows"] += len(samples)
        return samples

    # -- plain documents (the original distribution) -----------------------------------------------------
    def render_documents(self, docs: list[Document]) -> list[list[Sample]]:
        """BOS (where the tokenizer starts text with one) + text + EOS, cut into max_seq_len chunks (counted);
        every token is a target, none is assistant. The BOS matters: Gemma-3-270M scores plain docstrings at
        perplexity 184 without it and 19 with it (its pretraining always had it), so original-text figures
        without it measure the missing token, not the text."""
        eos = self.tok.eos_token or ""
        texts = [self._document_bos + d.text + eos for d in docs]
        out = []
        for doc, enc in zip(docs, self.encoder.encode(texts)):
            ids, nbytes = enc.ids, enc.nbytes
            chunks = [slice(i, i + self.max_seq_len) for i in range(0, len(ids), self.max_seq_len)]
            if len(chunks) > 1:
                self.stats.counts["documents_split_by_tokens"] += 1
            out.append([Sample(ids[c], np.ones(len(ids[c]), np.int8), np.zeros(len(ids[c]), np.int8), nbytes[c],
                               doc.id, doc.source, doc.domain or doc.source, doc.language or "unknown", w)
                        for w, c in enumerate(chunks)])
            self.stats.samples += len(chunks)
            self.stats.tokens += len(ids)
        return out

    @property
    def _document_bos(self) -> str:
        bos = self.tok.bos_token_id
        starts = self.tok("a")["input_ids"][:1] == [bos] if bos is not None else False
        return self.tok.bos_token if starts else ""

    # -- prompt/response pairs for evaluation ------------------------------------------------------------
    def prompt_response_pairs(self, conv: Conversation) -> list[dict]:
        """Each assistant turn with its preceding context, rendered as a generation prompt."""
        msgs = self.messages(conv)
        pairs = []
        for i, m in enumerate(msgs):
            if m["role"] == "assistant" and i > 0:
                pairs.append({"conversation_id": conv.id, "turn": i, "domain": conv.domain or conv.source,
                              "prompt": self.generation_prompt(msgs[:i]), "reference": m["content"]})
        return pairs


def _compiled_template(tokenizer):
    try:  # transformers' own (cached, sandboxed) compilation of the template, so it renders identically
        from transformers.utils.chat_template_utils import _compile_jinja_template  # private: may move
        return _compile_jinja_template(tokenizer.chat_template)
    except Exception:  # a private helper: if it moves, apply_chat_template is the (slower) way
        return None


def pack(samples: list[Sample], max_seq_len: int) -> list[dict]:
    """Greedily concatenate consecutive samples into rows of at most max_seq_len tokens; masks are kept per
    token and `lengths` records each packed sample. Samples attend to earlier ones in their row, as in
    ordinary packed pretraining."""
    groups: list[list[Sample]] = []
    used = max_seq_len + 1
    for s in samples:
        if used + len(s.input_ids) > max_seq_len:
            groups.append([])
            used = 0
        groups[-1].append(s)
        used += len(s.input_ids)
    return [{**{key: np.concatenate([getattr(s, key) for s in g])
                for key in ("input_ids", "token_mask", "assistant_mask", "token_bytes")},
             "lengths": [len(s.input_ids) for s in g], "conversation_ids": [s.conversation_id for s in g],
             "domain": g[0].domain, "domains": [s.domain for s in g], "sources": [s.source for s in g],
             "languages": [s.language for s in g], "windows": [s.window for s in g]}
            for g in groups]
