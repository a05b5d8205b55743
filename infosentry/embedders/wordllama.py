"""WordLlama's token table (`l2_supercat_256`): the second half of the offline default embedder.

A text's vector is the mean of its tokens' rows in a 32,000 × 256 table distilled from Llama 2's token
embeddings (no network, no attention: one lookup per token). The table and its tokenizer ship inside the
`wordllama` wheel (MIT); this module reads the two files itself, because the package's own loader asks Hugging
Face for a tokenizer it already carries. It reads English well and Chinese barely (most CJK characters are
byte tokens), so it is never used alone: multilingual.py mixes it into USE's cosine, where it sharpens how
English wording is read.
Never imports db or store.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from infosentry.errors import Unavailable

PACKAGE = "wordllama"
INSTALL_HINT = "pip install 'wordllama>=0.4'"
WEIGHTS = "weights/l2_supercat_256.safetensors"
TOKENIZER = "tokenizers/l2_supercat_tokenizer_config.json"
TENSOR = "embedding.weight"
DIM = 256
# Texts per lookup: bounds the gathered rows (a 2,000-character text is at most ~1,000 tokens, 1 MB as float32),
# so no large transient array is left for the allocator to keep
CHUNK = 8


class TableMissing(Unavailable):
    """The wordllama package (its token table) is not installed."""

    code, title = "model_missing", "Local embedding model is not installed"


def package_dir() -> Path:
    """Where the wheel put the table, found without importing the package (its import configures logging)."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        base = Path(location)
        if (base / WEIGHTS).is_file() and (base / TOKENIZER).is_file():
            return base
    raise TableMissing(
        f"the token table of the local embedding model ({PACKAGE!r}) is not installed; install it with `{INSTALL_HINT}`"
    )


class TokenTable:
    """Mean-pooled token rows, normalised: (n, 256) float32 unit rows. Loads lazily, once per instance; not
    thread-safe on its own: MultilingualEmbedder loads it under its own load lock before any embedding. The
    float16 rows are kept as int8 codes with a scale per row (8 MiB instead of 16; every pooled vector of the
    upstream reference within cosine 0.99997 of the float16 table's)."""

    dim: int = DIM

    def __init__(self) -> None:
        self._codes: np.ndarray | None = None
        self._scale: np.ndarray | None = None
        self._tokenizer: Any = None

    def load(self) -> None:
        if self._codes is not None:
            return
        from safetensors import safe_open
        from tokenizers import Tokenizer

        base = package_dir()
        tokenizer = Tokenizer.from_file(str(base / TOKENIZER))
        # with no pre-tokenizer the whole text is one BPE "word", so the model's word cache (10,000 entries)
        # would keep every recent text's tokens: +10 MiB after 7,000 headlines, and never a hit
        if hasattr(tokenizer.model, "_resize_cache"):
            tokenizer.model._resize_cache(0)
        self._tokenizer = tokenizer
        with safe_open(str(base / WEIGHTS), framework="np") as fh:
            table = fh.get_tensor(TENSOR)
        if table.shape[1] != DIM:
            raise ValueError(f"{base / WEIGHTS}: {table.shape[1]} columns, expected {DIM}")
        peak = np.abs(table).max(axis=1).astype(np.float32)
        self._scale = np.where(peak > 0, peak / 127, 1).astype(np.float32)
        self._codes = np.round(table / self._scale[:, None]).astype(np.int8)  # set last: it marks the load done

    def embed(self, texts: list[str]) -> np.ndarray:
        """Rows in input order; a text without tokens gets a zero row (it then adds nothing to a mixed cosine)."""
        self.load()
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for start in range(0, len(texts), CHUNK):
            self._embed_chunk(texts[start : start + CHUNK], out[start : start + CHUNK])
        return out

    def _embed_chunk(self, texts: list[str], out: np.ndarray) -> None:
        assert self._codes is not None and self._scale is not None
        # one text at a time: encode_batch would start a thread pool in every worker thread that calls it
        encodings = [self._tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
        lengths = np.array([len(ids) for ids in encodings])
        rows = np.nonzero(lengths)[0]
        if not len(rows):
            return
        ids = np.concatenate([encodings[i] for i in rows]).astype(np.int64)
        np.clip(ids, 0, len(self._codes) - 1, out=ids)  # as upstream: an id past the table reads its last row
        starts = np.concatenate(([0], np.cumsum(lengths[rows])[:-1]))
        gathered = self._codes[ids].astype(np.float32)
        gathered *= self._scale[ids, None]
        sums = np.add.reduceat(gathered, starts, axis=0)
        # the mean's length is irrelevant once normalised: the sum alone gives the same direction
        out[rows] = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), np.float32(1e-12))
