"""The embedder interface every provider implements (local numpy MiniLM, OpenAI, ...).

Leaf module: only numpy; providers import from here, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(slots=True)
class EmbedResult:
    """Vectors in input order (float32, shape (dim,), L2-normalised) and the tokens spent on them.

    `tokens` counts what the provider processed (billed tokens for an API, real non-padding tokens
    including special tokens for a local model) so the budget code can treat providers alike.
    """

    vectors: list[np.ndarray] = field(default_factory=list)
    tokens: int = 0


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit vectors of a fixed dimension; `name` is stored next to each vector so
    vectors from different models are never compared with each other."""

    name: str
    dim: int

    async def embed(self, texts: list[str]) -> EmbedResult: ...
