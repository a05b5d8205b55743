"""The one safe HTTP fetcher for every outbound request: connect-time SSRF guard, manual redirects,
decompressed-size cap, total timeout, per-host limit, conditional GET, classified errors (FetchError, in fetch_errors).
May import: aiohttp, yarl, multidict and the standard library — never infosentry.db or infosentry.store.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Self

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from infosentry import retry
from infosentry.fetch_errors import FetchError

DEFAULT_USER_AGENT = "infosentry/0.1 (self-hosted feed reader)"
DEFAULT_MAX_BYTES = 15 * 1024 * 1024
DEFAULT_TIMEOUT = 20.0
MAX_REDIRECTS = 5


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_READ_CHUNK = 64 * 1024
# The only caller headers that follow a redirect to another origin: they say what the client can read, never
# who it is. Any other header may be a credential under a name no list could foresee (X-Api-Key,
# Private-Token, ...), so it stays with the origin it was configured for. The validators are the Fetcher's
# own: they name the final resource, which is the one behind the redirect.
_CROSS_ORIGIN_HEADERS = frozenset({"accept", "accept-language", "if-none-match", "if-modified-since"})
# Host spellings that socket.inet_aton reads as IPv4: decimal (2130706433), octal (0177.0.0.1),
# hex (0x7f.1) and short forms (127.1).
_NUMERIC_HOST = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}", re.IGNORECASE)
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)

_STATUS_HINTS = {
    401: "authentication required",
    403: "access denied (the site may block automated clients)",
    404: "not found",
    410: "gone: the feed was removed",
    429: "rate limited",
    500: "server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}


# ---- address guard ------------------------------------------------------------------------------------

# Listed explicitly because Python's is_global/is_private miss some of them (CGNAT, 6to4 relay anycast,
# 192.0.0.0/24 exceptions, 3fff::/20) and the list documents the policy in one place.
_BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network", includes 0.0.0.0
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, includes cloud metadata 169.254.169.254
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes 255.255.255.255
        "::/128",
        "::1/128",
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard
        "2001::/23",  # IETF protocol assignments, includes Teredo 2001::/32
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> tuple[list[ipaddress.IPv4Address], bool]:
    """IPv4 addresses carried inside ``addr`` and whether they alone decide (mapped/compatible/NAT64 are
    just another spelling of the IPv4 host; 6to4 and Teredo are tunnels, so both layers must pass)."""
    if addr.ipv4_mapped is not None:
        return [addr.ipv4_mapped], True
    if int(addr) >> 32 == 0:  # IPv4-compatible ::a.b.c.d (deprecated), also :: and ::1
        return [ipaddress.IPv4Address(int(addr))], True
    if addr in _NAT64:
        return [ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)], True
    if addr.sixtofour is not None:
        return [addr.sixtofour], False
    if addr.teredo is not None:
        return list(addr.teredo), False
    return [], False


def _is_blocked(addr: IPAddress) -> bool:
    if any(addr.version == net.version and addr in net for net in _BLOCKED_NETWORKS):
        return True
    if (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
    ):
        return True
    if isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local:
        return True
    return not addr.is_global


class AddressGuard:
    """Decides whether a connection to an IP address is allowed: public addresses only, plus the
    networks an operator opted in (CIDRs in ``allow_networks``)."""

    def __init__(self, allow_networks: Iterable[str] = ()) -> None:
        allowed = []
        for net in allow_networks:
            try:
                allowed.append(ipaddress.ip_network(net.strip(), strict=False))
            except ValueError as exc:
                raise ValueError(f"allow_networks: {net!r} is not a valid network (CIDR): {exc}") from exc
        self.allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(allowed)

    def is_allowed(self, ip: str | IPAddress) -> bool:
        if isinstance(ip, str):
            try:
                addr: IPAddress = ipaddress.ip_address(ip.strip().strip("[]"))
            except ValueError:
                return False  # fail closed on anything that is not an address
        else:
            addr = ip
        return self._check(addr)

    def _opted_in(self, addr: IPAddress) -> bool:
        return any(addr.version == net.version and addr in net for net in self.allow_networks)

    def _check(self, addr: IPAddress) -> bool:
        if self._opted_in(addr):
            return True
        if isinstance(addr, ipaddress.IPv6Address):
            embedded, decisive = _embedded_ipv4(addr)
            if embedded and not all(self._check(v4) for v4 in embedded):
                return False
            if decisive:
                return True
        return not _is_blocked(addr)


def literal_ip(host: str) -> IPAddress | None:
    """The address a URL host denotes when it is an IP literal in any spelling, else None.

    Raises FetchError("invalid_url") for numeric hosts that are not valid addresses (e.g. 999.1.1.1),
    because resolvers disagree on them.
    """
    bare = host.strip("[]")
    if ":" in bare:
        try:
            return ipaddress.IPv6Address(bare)
        except ValueError as exc:
            raise FetchError("invalid_url", f"{host!r} is not a valid IPv6 address") from exc
    bare = bare.rstrip(".")
    if _NUMERIC_HOST.fullmatch(bare):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError as exc:
            raise FetchError("invalid_url", f"{host!r} looks like an IPv4 address but is not one") from exc
    return None


def _describe_refusal(what: str, addresses: Iterable[str]) -> str:
    listed = ", ".join(addresses)
    return (
        f"{what} resolves to {listed}: not a public address (private, loopback, link-local, CGNAT, "
        "multicast or reserved) and not in allow_networks — refused"
    )


class GuardedResolver(AbstractResolver):
    """Resolver that drops every answer the guard refuses, at connect time.

    aiohttp asks it for addresses right before each new connection, so a DNS answer that changes
    between validation and connection (rebinding) is still checked.
    """

    def __init__(self, guard: AddressGuard, inner: AbstractResolver | None = None) -> None:
        self._guard = guard
        self._inner = inner
        self._owns_inner = inner is None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = aiohttp.ThreadedResolver()
        answers = await self._inner.resolve(host, port, family)
        if not answers:
            raise FetchError("dns", f"DNS lookup for {host} returned no addresses")
        allowed = [answer for answer in answers if self._guard.is_allowed(answer["host"])]
        if not allowed:
            refused = sorted({str(answer["host"]) for answer in answers})
            raise FetchError("blocked_address", _describe_refusal(host, refused))
        return allowed

    async def close(self) -> None:
        if self._inner is not None and self._owns_inner:
            await self._inner.close()


# ---- header parsing -----------------------------------------------------------------------------------


def parse_max_age(cache_control: str | None) -> int | None:
    """Seconds from ``Cache-Control: max-age=N``; None if absent or invalid."""
    if not cache_control:
        return None
    match = _MAX_AGE.search(cache_control)
    return int(match.group(1)[:12]) if match else None


# ---- the fetcher --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Response:
    """A completed GET. ``url`` is the final URL and ``redirects`` the URLs that redirected to it; ``body``
    is decompressed (empty on 304); ``retry_after_at``/``max_age`` come from Retry-After/Cache-Control."""

    status: int
    url: str
    headers: CIMultiDictProxy[str]
    body: bytes
    not_modified: bool
    elapsed: float
    retry_after_at: datetime | None = None
    max_age: int | None = None
    redirects: list[str] = field(default_factory=list)

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")

    @property
    def etag(self) -> str | None:
        return self.headers.get("ETag")

    @property
    def last_modified(self) -> str | None:
        return self.headers.get("Last-Modified")


def _classify(exc: BaseException, url: str, host: str) -> FetchError:
    """Map aiohttp/ssl/socket exceptions to a FetchError kind with a message a user can act on."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(exc, socket.gaierror):
        reason = getattr(getattr(exc, "os_error", exc), "strerror", None) or str(exc)
        return FetchError("dns", f"DNS lookup failed for {host}: {reason}", url=url)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return FetchError("tls", f"TLS certificate of {host} is not valid: {exc.certificate_error}", url=url)
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError) or isinstance(
        getattr(exc, "os_error", None), ssl.SSLError
    ):
        reason = getattr(exc, "os_error", None) or exc
        return FetchError("tls", f"TLS handshake with {host} failed: {reason}", url=url)
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
        return FetchError("connection", f"cannot connect to {host}:{exc.port}: {reason}", url=url)
    if isinstance(exc, aiohttp.InvalidURL):
        return FetchError("invalid_url", f"invalid URL {url!r}: {exc}", url=url)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return FetchError("connection", f"{host} closed the connection before a complete response", url=url)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return FetchError("connection", f"response body from {host} was cut off or badly encoded: {exc}", url=url)
    if isinstance(exc, aiohttp.ClientResponseError):
        return FetchError("connection", f"malformed HTTP response from {host}: {exc.message}", url=url)
    detail = str(exc) or type(exc).__name__
    return FetchError("connection", f"connection to {host} failed: {detail}", url=url)


class Fetcher:
    """Holds one aiohttp session; use ``async with Fetcher(...)`` or ``start()`` / ``close()``.

    Nothing here reads the environment: the allowed networks, user agent and resolver are arguments.
    ``resolver`` is the inner DNS resolver (an aiohttp AbstractResolver, default ThreadedResolver);
    tests pass a stub so no real lookup happens.
    """

    max_redirects = MAX_REDIRECTS

    def __init__(
        self,
        *,
        allow_networks: Iterable[str] = (),
        user_agent: str = DEFAULT_USER_AGENT,
        per_host_limit: int = 2,
        resolver: AbstractResolver | None = None,
    ) -> None:
        if per_host_limit < 1:
            raise ValueError("per_host_limit: must be at least 1")
        self.guard = AddressGuard(allow_networks)
        self.user_agent = user_agent
        self.per_host_limit = per_host_limit
        self._inner_resolver = resolver
        self._resolver: GuardedResolver | None = None
        self._session: aiohttp.ClientSession | None = None
        self._host_slots: dict[str, asyncio.Semaphore] = {}

    async def start(self) -> None:
        if self._session is not None:
            return
        self._resolver = GuardedResolver(self.guard, self._inner_resolver)
        connector = aiohttp.TCPConnector(
            resolver=self._resolver,
            # Every new connection resolves afresh and is checked against that very answer; feeds are
            # polled minutes apart, so a DNS cache would save little.
            use_dns_cache=False,
            limit=100,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": self.user_agent},
            # Cookies from one feed must never reach another site.
            cookie_jar=aiohttp.DummyCookieJar(),
            # The total deadline is enforced by asyncio.timeout around each get(), across all hops.
            timeout=aiohttp.ClientTimeout(total=None),
            trust_env=False,
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def check_url(self, url: str | URL) -> URL:
        """Validate scheme and host of ``url`` without any network access; IP literals (in any spelling)
        are normalised and checked against the guard. Returns the URL to request."""
        try:
            target = url if isinstance(url, URL) else URL(url.strip())
            scheme = target.scheme.lower()
            host = target.raw_host
        except (TypeError, ValueError) as exc:
            raise FetchError("invalid_url", f"not a valid URL: {url!r} ({exc})", url=str(url)) from exc
        if scheme not in ("http", "https"):
            shown = f"{scheme!r}" if scheme else "(none)"
            raise FetchError("invalid_url", f"URL scheme {shown} is not allowed: only http and https", url=str(url))
        if not host:
            raise FetchError("invalid_url", f"URL has no host: {url!r}", url=str(url))
        ip = literal_ip(host)
        if ip is not None:
            if not self.guard.is_allowed(ip):
                raise FetchError("blocked_address", _describe_refusal(host, [str(ip)]), url=str(url))
            if ip.version == 4 and host != str(ip):
                target = target.with_host(str(ip))
        return target.with_fragment(None)

    def _slot(self, host: str) -> asyncio.Semaphore:
        slot = self._host_slots.get(host)
        if slot is None:
            slot = self._host_slots[host] = asyncio.Semaphore(self.per_host_limit)
        return slot

    async def get(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Response:
        """GET ``url`` safely. Returns a Response for 2xx and 304; raises FetchError otherwise.

        ``timeout`` bounds the whole exchange (every redirect hop and the body), not the time spent queued
        behind the per-host limit. ``max_bytes`` caps the body after decompression.
        """
        session = self._session
        if session is None:
            raise RuntimeError("Fetcher is not started: use 'async with Fetcher(...)' or await start()")
        request_headers: CIMultiDict[str] = CIMultiDict(headers or {})
        if etag:
            request_headers["If-None-Match"] = etag
        if last_modified:
            request_headers["If-Modified-Since"] = last_modified
        target = self.check_url(url)
        hops: list[str] = []
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        started = time.monotonic()
        try:
            while True:
                slot = self._slot(target.host or "")
                if deadline is None:
                    # Waiting behind other fetches to the same host is not the server being slow: the
                    # clock starts when the first request may go out, then covers every hop and the body.
                    await slot.acquire()
                    deadline = loop.time() + timeout
                    started = time.monotonic()
                else:
                    async with asyncio.timeout_at(deadline):
                        await slot.acquire()
                try:
                    async with (
                        asyncio.timeout_at(deadline),
                        session.get(target, headers=request_headers, allow_redirects=False) as resp,
                    ):
                        location = resp.headers.get("Location")
                        if resp.status not in _REDIRECT_STATUSES or not location:
                            return await self._finish(resp, url, started, max_bytes, hops)
                        next_target = self._redirect_target(resp.url, location, url)
                finally:
                    slot.release()
                hops.append(str(target))
                if len(hops) > self.max_redirects:
                    raise FetchError(
                        "too_many_redirects",
                        f"more than {self.max_redirects} redirects (next hop: {next_target})",
                        url=url,
                    )
                if next_target.origin() != target.origin():
                    for name in {n for n in request_headers if n.lower() not in _CROSS_ORIGIN_HEADERS}:
                        request_headers.popall(name, None)
                target = next_target
        except FetchError:
            raise
        except TimeoutError as exc:
            raise FetchError("timeout", f"no complete response within {timeout:g} s", url=url) from exc
        except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
            raise _classify(exc, url, target.host or "") from exc

    def _redirect_target(self, current: URL, location: str, url: str) -> URL:
        try:
            joined = current.join(URL(location.strip()))
        except (TypeError, ValueError) as exc:
            raise FetchError("invalid_url", f"redirect to an invalid URL {location!r}", url=url) from exc
        return self.check_url(joined)

    async def _finish(
        self,
        resp: aiohttp.ClientResponse,
        url: str,
        started: float,
        max_bytes: int,
        hops: list[str],
    ) -> Response:
        status = resp.status
        retry_after_at = retry.parse_retry_after(resp.headers.get("Retry-After"))
        if status == 304:
            body = b""
        elif 200 <= status < 300:
            body = await _read_capped(resp, max_bytes, url)
        else:
            raise FetchError("http_status", _status_message(resp), status=status, retry_after=retry_after_at, url=url)
        return Response(
            status=status,
            url=str(resp.url),
            headers=resp.headers,
            body=body,
            not_modified=status == 304,
            elapsed=time.monotonic() - started,
            retry_after_at=retry_after_at,
            max_age=parse_max_age(resp.headers.get("Cache-Control")),
            redirects=hops,
        )


def _status_message(resp: aiohttp.ClientResponse) -> str:
    status = resp.status
    hint = _STATUS_HINTS.get(status) or (resp.reason or "").lower() or "unexpected status"
    if status in _REDIRECT_STATUSES:
        hint = "redirect without a Location header"
    if status in (403, 503) and (
        resp.headers.get("cf-mitigated") == "challenge" or resp.headers.get("Server", "").lower() == "cloudflare"
    ):
        hint = "blocked by a Cloudflare challenge"
    return f"HTTP {status} from {resp.url.host}: {hint}"


async def _read_capped(resp: aiohttp.ClientResponse, max_bytes: int, url: str) -> bytes:
    """Read the body, decompressed by aiohttp in bounded steps, and stop as soon as it passes the cap
    (so a gzip/deflate/brotli bomb costs at most ``max_bytes`` plus one chunk of memory)."""
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    declared = resp.content_length
    if encoding in ("", "identity") and declared is not None and declared > max_bytes:
        resp.close()
        raise FetchError("too_large", f"Content-Length {declared} exceeds the {max_bytes}-byte limit", url=url)
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(_READ_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            # close() drops the connection instead of draining the rest of a bomb into the pool.
            resp.close()
            after = f" after {encoding} decompression" if encoding not in ("", "identity") else ""
            raise FetchError("too_large", f"response body exceeds the {max_bytes}-byte limit{after}", url=url)
        chunks.append(chunk)
    return b"".join(chunks)
