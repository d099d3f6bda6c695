"""Generation behind a small interface, and the hot swap of the model that answers.

`Engine` is what the API needs: the model's context, a prompt's length, and a stream of text for a chat. The one
here is transformers (`generate` + `TextIteratorStreamer`, the model's own chat template), loaded through the one
model loader (the registry's attention: eager for Gemma-2) and run under the precision policy (precision.py:
`auto` is fp32 on CPU, bf16-mixed on a GPU), as training evaluated the model. Where one process is not enough,
an existing serving engine (vLLM on GPUs) is the path: an `Engine` over its OpenAI-compatible server or its
Python API, behind the same API, store and hot swap; it is not built here (no GPU to test it on).

`ModelHolder` keeps the current (version, engine) pair; a request takes the pair once at its start and keeps it to
its end, so a swap to a newly promoted (or rolled back) version happens between requests and never under one.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import AutoTokenizer, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from ..models import FAMILIES, load_model, resolve_device
from ..precision import resolve_precision
from ..store import Version

log = logging.getLogger("convlearn.serve")


@dataclass
class Params:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Completion:
    text: str = ""
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Engine(Protocol):
    version: str
    context: int

    def prompt_tokens(self, messages: list[dict]) -> int: ...

    def stream(self, messages: list[dict], params: Params, done: Completion) -> Iterator[str]: ...


class _Stop(StoppingCriteria):
    """Stops generation once the decoded text holds a stop string (or the client went away)."""

    def __init__(self, stop: list[str], cancelled: threading.Event):
        self.stop, self.cancelled, self.text = stop, cancelled, ""

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.cancelled.is_set() or any(s in self.text for s in self.stop)


class TransformersEngine:
    _seeded = threading.Lock()  # `generate` samples from the global RNG: seeded requests take turns

    def __init__(self, folder: str, version: str, device: str = "auto", precision: str = "auto"):
        self.version, self.folder = version, str(folder)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.model = load_model(self.folder, precision=self.precision).eval()
        self.context = int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)
        family = FAMILIES.get(getattr(self.model.config, "model_type", ""))
        self.template_kwargs = dict(family.template_kwargs) if family else {}
        eos = self.model.generation_config.eos_token_id
        self.eos = [eos] if isinstance(eos, int) else list(eos or [self.tokenizer.eos_token_id])

    def _inputs(self, messages: list[dict]) -> dict:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True, **self.template_kwargs)

    def prompt_tokens(self, messages: list[dict]) -> int:
        return int(self._inputs(messages)["input_ids"].shape[1])

    def stream(self, messages: list[dict], params: Params, done: Completion,
               cancelled: threading.Event | None = None) -> Iterator[str]:
        """Text as it is generated; `done` is filled in at the end (the text without any stop string)."""
        cancelled = cancelled or threading.Event()
        inputs = {k: v.to(self.device) for k, v in self._inputs(messages).items()}
        done.prompt_tokens = int(inputs["input_ids"].shape[1])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = _Stop(params.stop, cancelled)
        sample = params.temperature > 0
        kwargs = dict(**inputs, max_new_tokens=params.max_tokens, do_sample=sample, streamer=streamer,
                      eos_token_id=self.eos, pad_token_id=self.tokenizer.pad_token_id or self.eos[0],
                      stopping_criteria=StoppingCriteriaList([stop]))
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
        result: dict = {}

        def run():
            try:
                with self.precision.autocast():  # autocast is per thread: entered in the generating one
                    if params.seed is not None:
                        with self._seeded:
                            torch.manual_seed(params.seed)
                            result["ids"] = self.model.generate(**kwargs)
                    else:
                        result["ids"] = self.model.generate(**kwargs)
            except BaseException as e:  # handed to the caller below
                result["error"] = e
                streamer.end()
        worker = threading.Thread(target=run, name="convlearn-generate", daemon=True)
        worker.start()
        sent = 0
        for piece in streamer:
            stop.text += piece
            cut = min((stop.text.find(s) for s in params.stop if s in stop.text), default=-1)
            visible = stop.text[:cut] if cut >= 0 else stop.text
            if len(visible) > sent:
                yield visible[sent:]
                sent = len(visible)
            if cut >= 0:
                break
        worker.join()
        if "error" in result:
            raise result["error"]
        new = result["ids"][0, done.prompt_tokens:]
        done.completion_tokens = int(new.shape[0])
        cut = min((stop.text.find(s) for s in params.stop if s in stop.text), default=-1)
        done.text = stop.text[:cut] if cut >= 0 else stop.text
        ended = bool(len(new)) and int(new[-1]) in self.eos
        done.finish_reason = "stop" if cut >= 0 or ended or done.completion_tokens < params.max_tokens else "length"


class ModelHolder:
    """The (version, engine) that answers now, and the swap to another between requests."""

    def __init__(self, loader: Callable[[Version], Engine], first: Version):
        self.loader = loader
        self._lock = threading.Lock()
        self.current = loader(first)
        self.swaps = 0
        self._stop = threading.Event()

    def engine(self) -> Engine:
        with self._lock:
            return self.current

    def swap_to(self, version: Version) -> None:
        """Load `version` off the request path, then make it current in one assignment."""
        engine = self.loader(version)
        with self._lock:
            self.current = engine
            self.swaps += 1
        log.info("now serving version %s (%s)", version.id, version.path)

    def watch(self, current_version: Callable[[], Version | None], every_s: float = 2.0) -> threading.Thread:
        """Poll the store's current-version pointer; swap when it names another version."""
        def loop():
            while not self._stop.wait(every_s):
                try:
                    version = current_version()
                    if version is not None and version.id != self.engine().version:
                        self.swap_to(version)
                except Exception as e:  # a version that fails to load leaves the current one serving
                    log.warning("could not swap to version %s: %s", getattr(version, "id", "?"), e)
        thread = threading.Thread(target=loop, name="convlearn-version-watch", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self._stop.set()

