"""Fake OpenAI-compatible server for tests and benchmarks: /v1/embeddings and /v1/chat/completions on 127.0.0.1,
in its own thread and event loop (so it serves async tests, sync tests, CLI subprocesses and benches alike).
Imports aiohttp and numpy only.

Usage::

    with FakeOpenAI() as fake:                      # or the `openai_server` fixture (tests/fakes/fixtures.py)
        settings = replace(settings, **fake.settings_overrides())   # base URL, key, EMBED_PROVIDER=openai
        ...

Embeddings (POST /v1/embeddings): deterministic unit vectors from `fake_vector(text, dim)` — lowercase words and
their character trigrams hashed (with a sign) into `dim` dimensions (the request's `dimensions`, else the real
model's size for text-embedding-3-small/-large/ada-002, else 256),
L2-normalised, so texts sharing words get similar vectors; a model name ending in "-high" blends every vector
with one shared direction, so all cosines cluster at 0.8-1.0. `encoding_format` "float" (default) or "base64"
(little-endian float32). `usage.prompt_tokens` = `usage.total_tokens` = sum of `fake_tokens(text)`
(ceil(len/4), at least 1). The response echoes the requested model.

Chat (POST /v1/chat/completions): the answer comes from a per-test script:
- `fake.chat_queue(*answers)`: answers are used in order (a str is the message content; a dict may give
  `content`, `prompt_tokens`, `completion_tokens`); when the queue is empty the handler is used;
- `fake.chat_handler(fn)`: `fn(request_json) -> str | dict`, called for every request without a queued answer;
- default: `{"label": "BATCH", "confidence": 0.5, "reason": "fake judge"}`.
Usage: prompt_tokens = ceil(len(json(messages))/4) unless scripted; completion_tokens = ceil(len(content)/4).

Scriptable failures (each counts down per request to any endpoint, `endpoint=` narrows it to "embeddings" or
"chat"), applied in this order: down > fail > hang > invalid:
- `fail_next(n, status=429|500|..., retry_after=None, retry_after_ms=None)`: an OpenAI-style error body, with
  `Retry-After` (seconds) / `retry-after-ms` headers when given;
- `hang_next(n, seconds)`: sleeps before answering normally (the client should time out first);
- `invalid_json_next(n, mode="body"|"content")`: a 200 whose body is not JSON ("body"), or, for chat, a valid
  envelope whose message content is not JSON ("content"; for embeddings "content" drops the `data` field);
- `down()` / `up()`: stop / restart listening on the same port (connection refused meanwhile);
- `refuse_texts(substring)`: every embeddings request with an input containing `substring` gets a 400 (a
  "poison" item, to exercise isolating bad inputs); `refuse_texts(None)` clears it.
Counters: `fake.requests["embeddings"|"chat"]` (every request received), `fake.served[...]` (answered normally:
not a scripted failure or invalid answer),
`fake.bodies[...]` (request JSON bodies, in order), `fake.texts_embedded` (inputs embedded), `fake.reset()`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import socket
import threading
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web

HOST = "127.0.0.1"
DEFAULT_DIM = 256
# the real models' dimensions, so code and benches see realistic vector sizes; any other model gets DEFAULT_DIM
MODEL_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
# Models whose name ends with "-high" answer vectors that all share one direction: cos ~ (4 + cos) / 5.
HIGH_SUFFIX = "-high"
HIGH_OFFSET = 2.0
DEFAULT_CHAT = {"label": "BATCH", "confidence": 0.5, "reason": "fake judge"}


def fake_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _features(text: str) -> list[tuple[str, float]]:
    """Words (weight 2, prefixed 'w:') and their padded character trigrams (weight 1, prefixed 't:')."""
    words = "".join(c.lower() if c.isalnum() else " " for c in text).split()
    feats = [(f"w:{w}", 2.0) for w in words]
    for w in words:
        padded = f"#{w}#"
        feats.extend((f"t:{padded[i : i + 3]}", 1.0) for i in range(len(padded) - 2))
    return feats or [("w:#empty#", 1.0)]


def fake_vector(text: str, dim: int = DEFAULT_DIM, *, high: bool = False) -> np.ndarray:
    """Deterministic unit vector: signed feature hashing of words (weight 2) and character trigrams (weight 1).
    `high`: blended with one shared direction, so every pair of texts has a cosine of about 0.8-1.0 (like models
    whose cosines cluster high, e.g. text-embedding-ada-002)."""
    vec = np.zeros(dim, dtype=np.float64)
    for feat, weight in _features(text):
        h = zlib.crc32(feat.encode())
        vec[h % dim] += weight if (h >> 31) & 1 else -weight
    norm = np.linalg.norm(vec)
    if norm == 0:
        vec[0], norm = 1.0, 1.0
    vec /= norm
    if high:
        shared = np.ones(dim) / np.sqrt(dim)
        vec = vec + HIGH_OFFSET * shared
        vec /= np.linalg.norm(vec)
    return vec.astype(np.float32)


@dataclass
class _Script:
    kind: str  # fail, hang, invalid
    remaining: int
    endpoint: str | None
    status: int = 500
    retry_after: float | None = None
    retry_after_ms: int | None = None
    seconds: float = 0.0
    mode: str = "body"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class FakeOpenAI:
    """An OpenAI-compatible HTTP server on 127.0.0.1 (own thread + loop); see the module docstring."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or _free_port()
        self._lock = threading.Lock()
        self._scripts: list[_Script] = []
        self._chat_queue: deque[Any] = deque()
        self._chat_fn: Callable[[dict[str, Any]], Any] | None = None
        self._refuse: str | None = None
        self.floats_only = False  # like Ollama: encoding_format is ignored, vectors are always JSON floats
        self.requests: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.bodies: dict[str, list[dict[str, Any]]] = {"embeddings": [], "chat": []}
        self.texts_embedded = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._up = False

    # --- lifecycle -----------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def settings_overrides(self, *, provider: str = "openai") -> dict[str, Any]:
        """Settings fields pointing infosentry at this server (use with dataclasses.replace)."""
        return {"openai_base_url": self.base_url, "openai_api_key": "sk-fake", "embed_provider": provider}

    def env(self) -> dict[str, str]:
        return {"OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": "sk-fake", "EMBED_PROVIDER": "openai"}

    def start(self) -> FakeOpenAI:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._listen())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._unlisten())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    async def _listen(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes([web.post("/v1/embeddings", self._embeddings), web.post("/v1/chat/completions", self._chat)])
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, HOST, self.port, reuse_address=True)
        await self._site.start()
        self._up = True

    async def _unlisten(self) -> None:
        # cleanup (not just site.stop) also closes kept-alive connections, so "down" really refuses clients
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = self._site = None
        self._up = False

    def _call(self, coro: Any) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def stop(self) -> None:
        if self._loop is None:
            return
        self._call(self._unlisten())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def down(self) -> None:
        """Stop listening: clients get connection refused until up()."""
        if self._up:
            self._call(self._unlisten())

    def up(self) -> None:
        if not self._up:
            self._call(self._listen())

    @property
    def is_up(self) -> bool:
        return self._up

    # --- scripting -----------------------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        retry_after: float | None = None,
        retry_after_ms: int | None = None,
        endpoint: str | None = None,
    ) -> None:
        self._add(_Script("fail", n, endpoint, status=status, retry_after=retry_after, retry_after_ms=retry_after_ms))

    def hang_next(self, n: int = 1, seconds: float = 5.0, *, endpoint: str | None = None) -> None:
        self._add(_Script("hang", n, endpoint, seconds=seconds))

    def invalid_json_next(self, n: int = 1, mode: str = "body", *, endpoint: str | None = None) -> None:
        if mode not in ("body", "content"):
            raise ValueError("mode is 'body' or 'content'")
        self._add(_Script("invalid", n, endpoint, mode=mode))

    def refuse_texts(self, substring: str | None) -> None:
        with self._lock:
            self._refuse = substring

    def chat_queue(self, *answers: Any) -> None:
        with self._lock:
            self._chat_queue.extend(answers)

    def chat_handler(self, fn: Callable[[dict[str, Any]], Any] | None) -> None:
        with self._lock:
            self._chat_fn = fn

    def reset(self) -> None:
        """Clear scripts, queued answers and counters (the server stays up)."""
        with self._lock:
            self._scripts.clear()
            self._chat_queue.clear()
            self._chat_fn = None
            self._refuse = None
            self.floats_only = False
            self.requests.clear()
            self.served.clear()
            self.bodies = {"embeddings": [], "chat": []}
            self.texts_embedded = 0

    def _add(self, script: _Script) -> None:
        if script.remaining > 0:
            with self._lock:
                self._scripts.append(script)

    def _take(self, endpoint: str) -> list[_Script]:
        """The scripts that apply to this request (one of each kind at most), counting them down."""
        taken: list[_Script] = []
        with self._lock:
            kinds: set[str] = set()
            for script in self._scripts:
                if script.kind in kinds or script.remaining <= 0:
                    continue
                if script.endpoint not in (None, endpoint):
                    continue
                script.remaining -= 1
                kinds.add(script.kind)
                taken.append(script)
            self._scripts = [s for s in self._scripts if s.remaining > 0]
        return taken

    # --- handlers ------------------------------------------------------------------------------------------

    async def _prelude(self, request: web.Request, endpoint: str) -> tuple[dict[str, Any] | None, web.Response | None]:
        with self._lock:
            self.requests[endpoint] += 1
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None, _error(400, "request body is not JSON")
        with self._lock:
            self.bodies[endpoint].append(body)
        scripts = {s.kind: s for s in self._take(endpoint)}
        if "fail" in scripts:
            s = scripts["fail"]
            headers = {}
            if s.retry_after is not None:
                headers["Retry-After"] = f"{s.retry_after:g}"
            if s.retry_after_ms is not None:
                headers["retry-after-ms"] = str(s.retry_after_ms)
            return body, _error(s.status, f"scripted failure {s.status}", headers=headers)
        if "hang" in scripts:
            await asyncio.sleep(scripts["hang"].seconds)
        if "invalid" in scripts:
            if scripts["invalid"].mode == "body" or endpoint == "embeddings":
                if scripts["invalid"].mode == "content":
                    return body, web.json_response({"object": "list", "model": body.get("model", "")})
                return body, web.Response(status=200, text="{not json", content_type="application/json")
            return body, _chat_response(body, "this is not JSON {", None, None)
        return body, None

    async def _embeddings(self, request: web.Request) -> web.Response:
        body, early = await self._prelude(request, "embeddings")
        if early is not None:
            return early
        assert body is not None
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return _error(400, "input must be a non-empty string or list of strings")
        if any(not t for t in texts):
            return _error(400, "input strings must not be empty")
        if self._refuse is not None and any(self._refuse in t for t in texts):
            return _error(400, "this input is refused (scripted)")
        dim = int(body.get("dimensions") or MODEL_DIMS.get(str(body.get("model")), DEFAULT_DIM))
        fmt = "float" if self.floats_only else body.get("encoding_format", "float")
        data = []
        for i, text in enumerate(texts):
            vec = fake_vector(text, dim, high=str(body.get("model", "")).endswith(HIGH_SUFFIX))
            emb: Any = base64.b64encode(vec.astype("<f4").tobytes()).decode() if fmt == "base64" else vec.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = sum(fake_tokens(t) for t in texts)
        with self._lock:
            self.served["embeddings"] += 1
            self.texts_embedded += len(texts)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model", "fake"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _chat(self, request: web.Request) -> web.Response:
        body, early = await self._prelude(request, "chat")
        if early is not None:
            return early
        assert body is not None
        with self._lock:
            answer = self._chat_queue.popleft() if self._chat_queue else None
            fn = self._chat_fn
        if answer is None:
            answer = fn(body) if fn is not None else json.dumps(DEFAULT_CHAT)
        prompt_tokens = completion_tokens = None
        if isinstance(answer, dict):
            prompt_tokens = answer.get("prompt_tokens")
            completion_tokens = answer.get("completion_tokens")
            answer = answer["content"]
        with self._lock:
            self.served["chat"] += 1
        return _chat_response(body, str(answer), prompt_tokens, completion_tokens)


def _error(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    kind = {429: "rate_limit_exceeded", 400: "invalid_request_error"}.get(status, "server_error")
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": kind}}, status=status, headers=headers
    )


def _chat_response(
    body: dict[str, Any], content: str, prompt_tokens: int | None, completion_tokens: int | None
) -> web.Response:
    if prompt_tokens is None:
        prompt_tokens = fake_tokens(json.dumps(body.get("messages", [])))
    if completion_tokens is None:
        completion_tokens = fake_tokens(content)
    return web.json_response(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def running() -> Iterator[FakeOpenAI]:
    """Generator for fixtures: a started server, stopped afterwards."""
    fake = FakeOpenAI().start()
    try:
        yield fake
    finally:
        fake.stop()
