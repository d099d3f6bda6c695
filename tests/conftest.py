"""Fixtures every test package shares: the four tiny twins, built once per session. Each package (data/, train/,
eval/, experiments/, serve/, learn/, config/) keeps its own fixtures in its conftest.py."""
import os
import sys
from pathlib import Path

import pytest

# Tests never touch the network: the hub is offline for them, as on CI.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))  # the shared helpers (helpers.py, datafiles.py, ...) for every package

from helpers import ARCHS  # noqa: E402 (needs the path above)


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


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL cluster for the session (tests/pgcluster.py); skipped, with the reason, only where
    PostgreSQL cannot be installed here."""
    from pgcluster import Cluster, binaries
    if binaries() is None:
        pytest.skip("PostgreSQL is not installed (`make postgres` installs Debian's; it needs root or sudo)")
    cluster = Cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """A fresh database on the session's cluster."""
    return pg_cluster.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """A new, empty store on each backend the project supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'live' / 'store.sqlite'}"
    return request.getfixturevalue("pg_url")
