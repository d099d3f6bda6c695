import os
import sys
from pathlib import Path

import pytest

# Tests never touch the network: the hub is offline for them, as on CI.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

ARCHS = ("qwen2", "llama", "gemma2", "phi3")


@pytest.fixture(scope="session")
def corpus():
    from convlearn.tiny import training_corpus
    return training_corpus()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, corpus):
    """The four tiny twins, built once per test session: arch -> model folder."""
    from convlearn.tiny import build_tiny_model
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_model(arch, root / arch, seed=0, texts=corpus) for arch in ARCHS}


@pytest.fixture(scope="session")
def tokenizers(tiny_models):
    from convlearn.models import load_tokenizer
    return {arch: load_tokenizer(str(path)) for arch, path in tiny_models.items()}


@pytest.fixture
def filled(tmp_path, tiny_models):
    """A serve directory whose store holds 60 consented chatterbot conversations and 10 unconsented ones."""
    from convlearn.store import Store, default_url
    from learnstore import chats, talk
    folder = tmp_path / "live"
    store = Store(default_url(folder))
    keys = {"sharing": store.add_key("sharing", consent_default=True), "private": store.add_key("private")}
    for i, conv in enumerate(chats(60)):
        talk(store, keys["sharing"], conv, f"s{i}")
    for i, conv in enumerate(chats(10, skip=60)):
        talk(store, keys["private"], conv, f"p{i}")
    store.engine.dispose()
    return folder, keys
