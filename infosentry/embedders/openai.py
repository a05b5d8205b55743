"""Embeddings from any OpenAI-compatible server: batched requests, a per-minute request limit, retries with
exponential backoff that honour Retry-After / retry-after-ms, and one call record per HTTP attempt.

Never imports db/store: the caller wires `per_minute` (a callable read at call time, e.g. the hot config's
EMBED_PER_MIN) and `on_call` (an async callback that stores the call record, e.g. budget.record_call).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from infosentry import retry
from infosentry.embedders.base import EmbedResult
from infosentry.settings import Settings

log = logging.getLogger(__name__)

# Dimensions of the well-known models; any other model's dimension is learned from its first answer.
KNOWN_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
# The API accepts up to 2048 inputs per request; 64 keeps a request small enough to retry cheaply.
BATCH_SIZE = 64
# Inputs are cut to this many characters (~2k tokens) so a single huge text can never exceed the model limit.
MAX_INPUT_CHARS = 8000
# 400/413/422 mean the input itself is refused: retrying the same text cannot help.
INPUT_FAULT = frozenset({400, 413, 422})


def make_client(settings: Settings, timeout: float) -> Any:
    """The AsyncOpenAI client for the configured server (embeddings and the judge), on the aiohttp transport
    rather than the default httpx2 one: a judge call against the fake server, both in one process, costs 3.7-4.0
    instead of 6.1-6.2 ms of CPU. No retries of its own: ours honour Retry-After and record every attempt. This
    transport reports a refused connection as a timeout; `retry.timed_out` tells them apart."""
    import openai

    return openai.AsyncOpenAI(
        api_key=settings.openai_api_key or "unset",
        base_url=settings.openai_base_url or None,
        max_retries=0,
        timeout=timeout,
        http_client=openai.DefaultAioHttpClient(),
    )


class EmbedError(Exception):
    """An embedding request failed for good (after retries, or at once for a refused input).

    `input_fault`: the server refused the input itself (400/413/422), so splitting the batch can isolate the
    bad text; otherwise the endpoint is unavailable or misconfigured (items stay pending and are retried).
    """

    def __init__(self, message: str, *, status: int | None = None, input_fault: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.input_fault = input_fault


@dataclass(frozen=True, slots=True)
class CallRecord:
    ok: bool
    http_status: int | None
    error: str | None
    latency_ms: int


class RateLimiter:
    """At most `per_minute()` request starts in any 60 s sliding window (per process); the limit is read on
    every acquire, so a hot-config change applies to the next request."""

    WINDOW = 60.0

    def __init__(self, per_minute: Callable[[], int]) -> None:
        self.per_minute = per_minute
        self._starts: collections.deque[float] = collections.deque()
        self._lock = asyncio.Lock()

    async def acquire(self) -> float:
        """Wait for a slot; returns the seconds waited."""
        waited = 0.0
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._starts and now - self._starts[0] >= self.WINDOW:
                    self._starts.popleft()
                limit = max(1, int(self.per_minute()))
                if len(self._starts) < limit:
                    self._starts.append(now)
                    return waited
                delay = self.WINDOW - (now - self._starts[0]) + 0.001
                waited += delay
                await asyncio.sleep(delay)


class OpenAIEmbedder:
    """Embedder for an OpenAI-compatible /v1/embeddings endpoint (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        batch_size: int = BATCH_SIZE,
        timeout: float = 20.0,
        max_attempts: int = 4,
        backoff: retry.Backoff = retry.EMBEDDINGS,
        client: Any = None,
    ) -> None:
        self.model = settings.openai_embed_model
        self.name = f"openai:{self.model}"
        self.dim = KNOWN_DIMS.get(self.model, 0)
        self.batch_size = max(1, batch_size)
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.per_minute: Callable[[], int] = lambda: 300
        self.on_call: Callable[[CallRecord], Awaitable[None]] | None = None
        self._settings = settings
        self._client = client
        self._limiter = RateLimiter(lambda: self.per_minute())

    def use_client(self, client: Any) -> None:
        """Share an AsyncOpenAI client (e.g. the Runtime's, which is closed with it)."""
        self._client = client

    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(self._settings, self.timeout)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def embed(self, texts: list[str]) -> EmbedResult:
        """Embed texts in requests of `batch_size`; raises EmbedError when a request fails for good."""
        if isinstance(texts, str):
            raise TypeError("embed expects a list of strings, not a single string")
        result = EmbedResult()
        for start in range(0, len(texts), self.batch_size):
            chunk = [(t or " ")[:MAX_INPUT_CHARS] for t in texts[start : start + self.batch_size]]
            vectors, tokens = await self._request(chunk)
            result.vectors.extend(vectors)
            result.tokens += tokens
        return result

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        """Blocking variant for scripts (not for use inside a running event loop)."""
        vectors = asyncio.run(self.embed(texts)).vectors
        return np.stack(vectors) if vectors else np.empty((0, self.dim), dtype=np.float32)

    async def _record(self, rec: CallRecord) -> None:
        if self.on_call is None:
            return
        try:
            await self.on_call(rec)
        except Exception as exc:  # accounting must never turn a good answer into a failure
            log.warning("could not record embedding call: %s", exc, extra={"action": "embed_call_record_failed"})

    async def _request(self, chunk: list[str]) -> tuple[list[np.ndarray], int]:
        import openai

        last = "no attempt"
        status: int | None = None
        for attempt in range(self.max_attempts):
            await self._limiter.acquire()
            started = time.monotonic()
            wait_hint: float | None = None
            try:
                # The raw body, parsed here: the SDK builds a typed object per float (~10 us each, 15 s for
                # 1,000 vectors of 1536 floats). base64 (what OpenAI's own clients ask for) decodes in
                # microseconds where a JSON list of floats takes milliseconds; a server that ignores the
                # parameter and answers floats (Ollama) is read too.
                raw = await self.client().embeddings.with_raw_response.create(
                    model=self.model, input=chunk, encoding_format="base64", timeout=self.timeout
                )
                vectors, tokens = self._parse(json.loads(await raw.http_response.aread()), chunk)
            except asyncio.CancelledError:
                raise
            except openai.APIStatusError as exc:
                status = exc.status_code
                last = f"HTTP {status}: {_short(exc)}"
                await self._record(CallRecord(False, status, last, _ms(started)))
                if status in INPUT_FAULT:
                    raise EmbedError(last, status=status, input_fault=True) from None
                if not retry.retryable_status(status):
                    raise EmbedError(last, status=status) from None
                wait_hint = retry.retry_after_seconds(exc.response.headers if exc.response is not None else None)
            except openai.APITimeoutError as exc:
                why = (
                    f"timeout after {self.timeout:g}s" if retry.timed_out(exc) else f"connection failed: {_short(exc)}"
                )
                status, last = None, why
                await self._record(CallRecord(False, None, last, _ms(started)))
            except openai.APIConnectionError as exc:
                status, last = None, f"connection failed: {_short(exc)}"
                await self._record(CallRecord(False, None, last, _ms(started)))
            except Exception as exc:  # a 200 we cannot read (invalid JSON, missing data, wrong count)
                status, last = 200, f"invalid response: {_short(exc)}"
                await self._record(CallRecord(False, 200, last, _ms(started)))
            else:
                await self._record(CallRecord(True, 200, None, _ms(started)))
                return vectors, tokens
            if attempt + 1 < self.max_attempts:
                await asyncio.sleep(self._delay(attempt, wait_hint))
        raise EmbedError(f"embedding failed after {self.max_attempts} attempts: {last}", status=status)

    def _delay(self, attempt: int, hint: float | None) -> float:
        # the server said how long: wait exactly that (capped), not our guess
        return self.backoff.delay(attempt + 1, retry_after=hint or None)

    def _parse(self, body: Any, chunk: list[str]) -> tuple[list[np.ndarray], int]:
        """Vectors (unit length, input order) and billed tokens from an /embeddings JSON body."""
        expected = len(chunk)
        data = sorted(body["data"], key=lambda d: d["index"])
        if len(data) != expected:
            raise ValueError(f"expected {expected} embeddings, got {len(data)}")
        vectors = []
        for d in data:
            vec = _vector(d["embedding"])
            norm = float(np.linalg.norm(vec))
            if vec.ndim != 1 or not vec.size or not np.isfinite(norm) or norm == 0:
                raise ValueError("an embedding is empty or not finite")
            vectors.append(vec / norm)  # OpenAI vectors are unit length already; other servers may not be
        dims = {v.size for v in vectors}
        if len(dims) != 1:
            raise ValueError(f"embeddings of mixed dimensions {sorted(dims)} in one answer")
        dim = dims.pop()
        if self.dim and dim != self.dim:
            # the server is the authority on its model (e.g. a `dimensions` default); vectors are only ever
            # compared with vectors of the same model name, so follow it and say so once
            log.warning(
                "model %s answers with %d dimensions, not %d",
                self.model,
                dim,
                self.dim,
                extra={"action": "embed_dimension_changed"},
            )
        self.dim = dim
        usage = body.get("usage") or {}
        tokens = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
        if tokens <= 0:  # a server without usage: estimate (~4 characters per token) so the budget still counts
            tokens = sum(max(1, len(t) // 4) for t in chunk)
        return vectors, tokens


def _vector(embedding: Any) -> np.ndarray:
    """One embedding as float32: base64 of little-endian float32s, or a JSON list of numbers."""
    if isinstance(embedding, str):
        try:
            raw = base64.b64decode(embedding, validate=True)
        except binascii.Error:
            raise ValueError("an embedding is not valid base64") from None
        if len(raw) % 4:
            raise ValueError("a base64 embedding is not a whole number of float32 values")
        return np.frombuffer(raw, dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
