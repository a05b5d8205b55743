"""A controllable fake feed server on 127.0.0.1 and a stub DNS resolver, for fetch, ingest and benchmark tests.

Usage::

    async with FakeFeedServer() as server:
        server.add("/feed.xml", RSS_BYTES, etag='"v1"')     # answers 304 to If-None-Match: "v1"
        server.redirect("/old", "/feed.xml")
        server.bomb("/bomb", decompressed_size=64 * 1024 * 1024)
        url = server.url("/feed.xml")
        ...
        assert server.hits("/feed.xml") == 1

Routes can be added or replaced while the server runs. Everything binds to loopback only.
May import: aiohttp, brotli and the standard library.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import socket
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import brotli
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RSS_TYPE = "application/rss+xml; charset=utf-8"


@dataclass
class RecordedRequest:
    method: str
    path_qs: str
    headers: CIMultiDict[str]


@dataclass
class Route:
    """One registered path. Mutate fields between requests to change behaviour (e.g. ``route.etag``)."""

    body: bytes = b""
    status: int = 200
    content_type: str | None = RSS_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None  # sent as ETag; a matching If-None-Match gets 304
    last_modified: str | None = None  # sent as Last-Modified; an equal If-Modified-Since gets 304
    delay: float = 0.0  # seconds before the response headers
    body_delay: float = 0.0  # seconds between the headers and the body (tests a stalled body)
    encoding: str | None = None  # "gzip" | "deflate" | "br": body is sent compressed with Content-Encoding
    keep_alive: bool = True  # False sends "Connection: close", forcing the client to reconnect
    handler: Handler | None = None  # full control; the fields above are then ignored
    requests: list[RecordedRequest] = field(default_factory=list)

    @property
    def hits(self) -> int:
        return len(self.requests)


def compress(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data, compresslevel=6)
    if encoding == "deflate":
        return zlib.compress(data, 6)
    if encoding == "br":
        return brotli.compress(data, quality=5)
    raise ValueError(f"unknown encoding {encoding!r}")


def make_rss(n_items: int = 20, *, site: str = "https://feed.example.com", tag: str = "item", start: int = 0) -> bytes:
    """A valid RSS 2.0 document of ``n_items`` items with HTML descriptions (links {site}/{tag}/{i},
    one minute apart, newest first). 20 items come to about 7 KiB."""
    items = []
    for i in range(start, start + n_items):
        minute = (start + n_items - i) % 60
        items.append(
            f"<item><title>{tag.title()} {i}: something happened</title><link>{site}/{tag}/{i}</link>"
            f'<guid isPermaLink="false">{tag}-{i}</guid><pubDate>Wed, 01 May 2024 10:{minute:02d}:00 GMT</pubDate>'
            f'<description><![CDATA[<p>Story <b>{i}</b> in <a href="/{tag}/{i}">detail</a>, with '
            f"<em>markup</em> to strip.</p><p>Second paragraph of {tag} {i}.</p>]]></description></item>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>Synthetic feed</title>'
        f"<link>{site}/</link><description>generated</description>{''.join(items)}</channel></rss>"
    ).encode()


_BOMB_CACHE: dict[tuple[int, str], bytes] = {}


def make_bomb(decompressed_size: int, encoding: str = "gzip") -> bytes:
    """A compressed run of ``decompressed_size`` zero bytes (64 MiB of zeros gzip to about 64 KiB)."""
    key = (decompressed_size, encoding)
    if key not in _BOMB_CACHE:
        block = bytes(1024 * 1024)
        if encoding == "br":
            compressor = brotli.Compressor(quality=5)
            feed, finish = compressor.process, compressor.finish
        else:
            zobj = zlib.compressobj(6, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
            feed, finish = zobj.compress, zobj.flush
        parts, left = [], decompressed_size
        while left > 0:
            chunk = block[: min(left, len(block))]
            parts.append(feed(chunk))
            left -= len(chunk)
        parts.append(finish())
        _BOMB_CACHE[key] = b"".join(parts)
    return _BOMB_CACHE[key]


class FakeFeedServer:
    """An aiohttp server on ``host`` (loopback) with routes registered per test."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"FakeFeedServer binds to loopback only, not {host}")
        self.host = host
        self.port = port
        self.routes: dict[str, Route] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._runner: web.AppRunner | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # A short shutdown timeout: tests leave slow handlers sleeping, and close() should not wait for them.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- routes --------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(
        self,
        path: str,
        body: bytes | str = b"",
        *,
        status: int = 200,
        content_type: str | None = RSS_TYPE,
        headers: Mapping[str, str] | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
        delay: float = 0.0,
        body_delay: float = 0.0,
        encoding: str | None = None,
        keep_alive: bool = True,
    ) -> Route:
        """Serve ``body`` at ``path`` (a registered "path?query" matches before the bare path), replacing
        any earlier route there. The keyword arguments are the Route fields of the same names."""
        route = Route(
            body=body.encode("utf-8") if isinstance(body, str) else body,
            status=status,
            content_type=content_type,
            headers=dict(headers or {}),
            etag=etag,
            last_modified=last_modified,
            delay=delay,
            body_delay=body_delay,
            encoding=encoding,
            keep_alive=keep_alive,
        )
        self.routes[path] = route
        return route

    def add_handler(self, path: str, handler: Handler) -> Route:
        route = Route(handler=handler)
        self.routes[path] = route
        return route

    def redirect(self, path: str, location: str, status: int = 302) -> Route:
        return self.add(path, b"", status=status, content_type=None, headers={"Location": location})

    def redirect_chain(self, prefix: str, hops: int, target: str) -> str:
        """``hops`` redirects ``{prefix}0 -> {prefix}1 -> ... -> target``; returns the first path."""
        for i in range(hops):
            self.redirect(f"{prefix}{i}", f"{prefix}{i + 1}" if i + 1 < hops else target)
        return f"{prefix}0"

    def bomb(self, path: str, decompressed_size: int, encoding: str = "gzip") -> Route:
        """A compression bomb: a small body that decompresses to ``decompressed_size`` zero bytes."""
        route = self.add(path, make_bomb(decompressed_size, encoding), content_type="application/rss+xml")
        route.headers["Content-Encoding"] = encoding
        return route

    def hits(self, path: str) -> int:
        route = self.routes.get(path)
        return route.hits if route else 0

    @property
    def total_hits(self) -> int:
        return sum(route.hits for route in self.routes.values())

    def last_request(self, path: str) -> RecordedRequest:
        return self.routes[path].requests[-1]

    # -- serving -------------------------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        route = self.routes.get(request.path_qs) or self.routes.get(request.path)
        if route is None:
            return web.Response(status=404, text="no such route")
        route.requests.append(RecordedRequest(request.method, request.path_qs, CIMultiDict(request.headers)))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if route.handler is not None:
                return await route.handler(request)
            return await self._respond(route, request)
        finally:
            self.in_flight -= 1

    async def _respond(self, route: Route, request: web.Request) -> web.StreamResponse:
        if route.delay:
            await asyncio.sleep(route.delay)
        headers = CIMultiDict(route.headers)
        if route.etag:
            headers["ETag"] = route.etag
        if route.last_modified:
            headers["Last-Modified"] = route.last_modified
        inm = request.headers.get("If-None-Match")
        ims = request.headers.get("If-Modified-Since")
        if (route.etag and inm and route.etag in [t.strip() for t in inm.split(",")]) or (
            route.last_modified and ims == route.last_modified
        ):
            response = web.Response(status=304, headers=headers)
        else:
            body = route.body
            if route.encoding:
                body = compress(body, route.encoding)
                headers["Content-Encoding"] = route.encoding
            if route.content_type:
                headers["Content-Type"] = route.content_type
            if route.body_delay:
                return await self._stream_slowly(request, route, headers, body)
            response = web.Response(status=route.status, body=body, headers=headers)
        if not route.keep_alive:
            response.force_close()
        return response

    async def _stream_slowly(
        self, request: web.Request, route: Route, headers: CIMultiDict[str], body: bytes
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=route.status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        await asyncio.sleep(route.body_delay)
        await response.write(body)
        await response.write_eof()
        return response


class StubResolver(AbstractResolver):
    """DNS without the network: ``answers`` maps a host name to its addresses, or to a list of successive
    answers (one list per lookup, the last one repeating) to simulate DNS rebinding. Unknown names raise
    socket.gaierror like a real NXDOMAIN. ``calls`` records every looked-up name."""

    def __init__(self, answers: Mapping[str, Iterable[str] | list[list[str]]]) -> None:
        self.answers: dict[str, list[list[str]]] = {}
        for host, value in answers.items():
            values = list(value)
            self.answers[host] = values if values and isinstance(values[0], list) else [values]  # type: ignore[list-item]
        self.calls: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append(host)
        sequence = self.answers.get(host)
        if sequence is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        index = min(sum(1 for name in self.calls if name == host) - 1, len(sequence) - 1)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in sequence[index]
        ]

    async def close(self) -> None:
        return None
