"""Embedding providers behind one interface (base.Embedder): `local` (offline: USE-multilingual v3 with
WordLlama's token table by default, USE alone, or all-MiniLM-L6-v2) and `openai` (any OpenAI-compatible
server)."""

from __future__ import annotations

from infosentry.embedders.base import Embedder
from infosentry.settings import Settings


def make_embedder(settings: Settings) -> Embedder:
    if settings.embed_provider == "openai":
        from infosentry.embedders.openai import OpenAIEmbedder

        return OpenAIEmbedder(settings)
    if settings.local_embed_model == "all-MiniLM-L6-v2":
        from infosentry.embedders.local import LocalEmbedder

        return LocalEmbedder()
    from infosentry.embedders.multilingual import MultilingualEmbedder

    return MultilingualEmbedder(mixed=settings.local_embed_model == "use-multilingual-v3+wordllama")
