"""The safe fetcher: address guard, host spellings, connect-time DNS checks, redirects, caps, timeouts,
conditional GET and error classification.

Only loopback is ever contacted: non-loopback cases use a stub resolver and are refused before any
connection, and a tripwire fails the test (without connecting) if a socket to another address is attempted.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import pickle
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.connector
import pytest

from infosentry.fetch import (
    AddressGuard,
    Fetcher,
    GuardedResolver,
    literal_ip,
    parse_max_age,
)
from infosentry.fetch_errors import FetchError
from infosentry.retry import parse_retry_after
from tests.fakes.feeds import FakeFeedServer, StubResolver, make_bomb

RSS = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'
LOOPBACK = ["127.0.0.1/32"]


@pytest.fixture(autouse=True)
def loopback_tripwire(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail loudly instead of connecting if anything reaches for a non-loopback address."""
    real = aiohttp.connector.aiohappyeyeballs.start_connection
    attempts: list[str] = []

    async def only_loopback(addr_infos: Any, *args: Any, **kwargs: Any) -> socket.socket:
        for info in addr_infos:
            host = info[4][0]
            if not ipaddress.ip_address(host.split("%")[0]).is_loopback:
                attempts.append(host)
                raise AssertionError(f"test tried to connect to non-loopback address {host}")
        return await real(addr_infos, *args, **kwargs)

    monkeypatch.setattr(aiohttp.connector.aiohappyeyeballs, "start_connection", only_loopback)
    yield attempts
    assert not attempts


@pytest.fixture
async def server() -> AsyncIterator[FakeFeedServer]:
    async with FakeFeedServer() as srv:
        yield srv


@pytest.fixture
async def fetcher() -> AsyncIterator[Fetcher]:
    async with Fetcher(allow_networks=LOOPBACK, user_agent="infosentry-test/1.0") as f:
        yield f


# ---- the guard (pure) ------------------------------------------------------------------------------------

REFUSED = [
    "169.254.169.254",  # cloud metadata
    "169.254.0.1",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "127.0.0.1",
    "127.0.0.2",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.0.9",  # 192.0.0.0/24, although Python calls it global
    "192.0.0.170",
    "192.0.2.1",
    "192.88.99.1",  # 6to4 relay anycast, although Python calls it global
    "198.18.0.1",  # benchmarking
    "198.19.255.255",
    "198.51.100.7",
    "203.0.113.9",
    "::",
    "::1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fe80::1%eth0",
    "fec0::1",
    "ff02::1",
    "2001:db8::1",
    "3fff::1",
    "100::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::1",  # local-use NAT64
    "2002:a00:1::1",  # 6to4 of 10.0.0.1 (Python calls the IPv6 address global)
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1
    "not-an-address",
    "",
]
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", REFUSED)
def test_guard_refuses_non_public_addresses(address: str) -> None:
    assert not AddressGuard().is_allowed(address)


@pytest.mark.parametrize("address", ALLOWED)
def test_guard_allows_public_addresses(address: str) -> None:
    assert AddressGuard().is_allowed(address)


def test_guard_opt_in_networks() -> None:
    guard = AddressGuard(["127.0.0.1/32", "10.1.0.0/16", "fd00::/8"])
    assert guard.is_allowed("127.0.0.1")
    assert guard.is_allowed("::ffff:127.0.0.1")  # another spelling of the same host
    assert guard.is_allowed("10.1.2.3")
    assert guard.is_allowed("fd00::5")
    assert not guard.is_allowed("127.0.0.2")
    assert not guard.is_allowed("::1")
    assert not guard.is_allowed("10.2.0.1")
    assert not guard.is_allowed("169.254.169.254")
    with pytest.raises(ValueError, match="allow_networks"):
        AddressGuard(["not-a-cidr"])


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),  # decimal
        ("0177.0.0.1", "127.0.0.1"),  # octal
        ("0x7f.0.0.1", "127.0.0.1"),  # hex
        ("0x7F000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),  # short form
        ("10.1", "10.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("169.254.169.254", "169.254.169.254"),
        ("::ffff:7f00:1", "::ffff:7f00:1"),
        ("[::1]", "::1"),
        ("example.com", None),
        ("1e100.net", None),
        ("0x.example", None),
    ],
)
def test_literal_ip_spellings(host: str, expected: str | None) -> None:
    result = literal_ip(host)
    assert (str(result) if result is not None else None) == expected


def test_literal_ip_rejects_invalid_numeric_hosts() -> None:
    with pytest.raises(FetchError) as info:
        literal_ip("999.1.1.1")
    assert info.value.kind == "invalid_url"


async def test_guarded_resolver_filters_answers_without_connecting() -> None:
    stub = StubResolver({"mixed.test": ["10.0.0.1", "93.184.216.34", "fe80::1"], "evil.test": ["10.0.0.1"]})
    resolver = GuardedResolver(AddressGuard(), stub)
    answers = await resolver.resolve("mixed.test", 80)
    assert [a["host"] for a in answers] == ["93.184.216.34"]
    with pytest.raises(FetchError) as info:
        await resolver.resolve("evil.test", 80)
    assert info.value.kind == "blocked_address"
    assert "10.0.0.1" in str(info.value)


# ---- refusals through the fetcher, by stub DNS, with no connection --------------------------------------


@pytest.mark.parametrize(
    "address", ["169.254.169.254", "10.0.0.1", "100.64.0.1", "fc00::1", "::ffff:127.0.0.1", "127.0.0.1"]
)
async def test_dns_answers_in_refused_ranges_are_blocked(address: str) -> None:
    stub = StubResolver({"feeds.evil.test": [address]})
    async with Fetcher(resolver=stub) as f:
        with pytest.raises(FetchError) as info:
            await f.get("http://feeds.evil.test/rss")
    assert info.value.kind == "blocked_address"
    assert address in str(info.value) and "refused" in str(info.value)
    assert stub.calls == ["feeds.evil.test"]


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.0.0.1/",
        "http://127.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::1]/",
        "http://0.0.0.0/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://10.0.0.1:8080/feed",
    ],
)
async def test_ip_literals_in_any_spelling_are_checked_before_connecting(url: str) -> None:
    stub = StubResolver({})
    async with Fetcher(resolver=stub) as f:
        with pytest.raises(FetchError) as info:
            await f.get(url)
    assert info.value.kind == "blocked_address"
    assert stub.calls == []  # never reached DNS, let alone a socket


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/feed", "file:///etc/passwd", "gopher://example.com/", "javascript:alert(1)", "//x.org/a", ""],
)
async def test_non_http_schemes_are_invalid(url: str) -> None:
    async with Fetcher(resolver=StubResolver({})) as f:
        with pytest.raises(FetchError) as info:
            await f.get(url)
    assert info.value.kind == "invalid_url"
    assert "http" in str(info.value)


async def test_unknown_host_is_a_dns_error() -> None:
    async with Fetcher(resolver=StubResolver({})) as f:
        with pytest.raises(FetchError) as info:
            await f.get("http://nxdomain.test/feed")
    assert info.value.kind == "dns"
    assert "nxdomain.test" in str(info.value)


async def test_dns_rebinding_is_caught_at_connect_time(server: FakeFeedServer) -> None:
    server.add("/feed", RSS, keep_alive=False)  # every fetch needs a new connection, hence a new lookup
    stub = StubResolver({"rebind.test": [["127.0.0.1"], ["10.0.0.1"]]})
    async with Fetcher(allow_networks=LOOPBACK, resolver=stub) as f:
        first = await f.get(f"http://rebind.test:{server.port}/feed")
        assert first.status == 200
        with pytest.raises(FetchError) as info:
            await f.get(f"http://rebind.test:{server.port}/feed")
    assert info.value.kind == "blocked_address"
    assert stub.calls == ["rebind.test", "rebind.test"]
    assert server.hits("/feed") == 1


async def test_mixed_dns_answer_connects_only_to_allowed_address(server: FakeFeedServer) -> None:
    server.add("/feed", RSS)
    stub = StubResolver({"mixed.test": ["10.0.0.1", "169.254.169.254", "127.0.0.1"]})
    async with Fetcher(allow_networks=LOOPBACK, resolver=stub) as f:
        response = await f.get(f"http://mixed.test:{server.port}/feed")
    assert response.status == 200 and response.body == RSS


# ---- live loopback ----------------------------------------------------------------------------------------


async def test_fetch_allowed_loopback(server: FakeFeedServer, fetcher: Fetcher) -> None:
    server.add("/feed", RSS, headers={"X-Test": "yes"})
    response = await fetcher.get(server.url("/feed"))
    assert response.status == 200
    assert response.body == RSS
    assert response.url == server.url("/feed")
    assert response.headers["X-Test"] == "yes"
    assert response.content_type == "application/rss+xml; charset=utf-8"
    assert not response.not_modified
    assert response.elapsed > 0
    assert server.last_request("/feed").headers["User-Agent"] == "infosentry-test/1.0"


async def test_other_loopback_addresses_are_refused(server: FakeFeedServer, fetcher: Fetcher) -> None:
    server.add("/feed", RSS)
    async with FakeFeedServer(host="127.0.0.2") as other:
        other.add("/feed", RSS)
        for url in (
            other.url("/feed"),
            f"http://[::1]:{server.port}/feed",
            f"http://0.0.0.0:{server.port}/feed",
            f"http://[::ffff:127.0.0.2]:{server.port}/feed",
        ):
            with pytest.raises(FetchError) as info:
                await fetcher.get(url)
            assert info.value.kind == "blocked_address", url
        assert other.hits("/feed") == 0
    assert server.hits("/feed") == 0


@pytest.mark.skipif(
    "localhost" not in Path("/etc/hosts").read_text(errors="replace"), reason="localhost is not in /etc/hosts"
)
async def test_localhost_through_the_real_resolver(server: FakeFeedServer) -> None:
    server.add("/feed", RSS)
    async with Fetcher() as default:  # no allow_networks: loopback is refused after resolution
        with pytest.raises(FetchError) as info:
            await default.get(f"http://localhost:{server.port}/feed")
        assert info.value.kind == "blocked_address" and "localhost resolves to" in str(info.value)
    async with Fetcher(allow_networks=LOOPBACK) as allowed:  # ::1 is dropped, 127.0.0.1 is used
        assert (await allowed.get(f"http://localhost:{server.port}/feed")).body == RSS
    assert server.hits("/feed") == 1


async def test_numeric_spellings_are_normalised_then_allowed(server: FakeFeedServer, fetcher: Fetcher) -> None:
    server.add("/feed", RSS)
    for host in ("2130706433", "0177.0.0.1", "0x7f.0.0.1", "127.1"):
        response = await fetcher.get(f"http://{host}:{server.port}/feed")
        assert response.status == 200
        assert response.url == server.url("/feed")
    assert server.hits("/feed") == 4


async def test_redirect_to_refused_address_is_blocked(server: FakeFeedServer, fetcher: Fetcher) -> None:
    async with FakeFeedServer(host="127.0.0.2") as other:
        other.add("/feed", RSS)
        server.redirect("/go", other.url("/feed"))
        with pytest.raises(FetchError) as info:
            await fetcher.get(server.url("/go"))
        assert info.value.kind == "blocked_address"
        assert other.hits("/feed") == 0
    server.redirect("/meta", "http://169.254.169.254/latest/meta-data/")
    server.redirect("/file", "file:///etc/passwd")
    with pytest.raises(FetchError) as info:
        await fetcher.get(server.url("/meta"))
    assert info.value.kind == "blocked_address"
    with pytest.raises(FetchError) as info:
        await fetcher.get(server.url("/file"))
    assert info.value.kind == "invalid_url"


async def test_redirect_rechecks_dns_of_each_hop(server: FakeFeedServer) -> None:
    stub = StubResolver({"good.test": ["127.0.0.1"], "bad.test": ["10.0.0.1"]})
    server.redirect("/go", f"http://bad.test:{server.port}/feed")
    server.add("/feed", RSS)
    async with Fetcher(allow_networks=LOOPBACK, resolver=stub) as f:
        with pytest.raises(FetchError) as info:
            await f.get(f"http://good.test:{server.port}/go")
    assert info.value.kind == "blocked_address"
    assert stub.calls == ["good.test", "bad.test"]
    assert server.hits("/feed") == 0


async def test_five_redirects_are_followed(server: FakeFeedServer, fetcher: Fetcher) -> None:
    server.add("/final", RSS)
    first = server.redirect_chain("/hop", 5, "/final")
    response = await fetcher.get(server.url(first))
    assert response.status == 200 and response.body == RSS
    assert response.url == server.url("/final")
    assert len(response.redirects) == 5


async def test_more_than_five_redirects_fail(server: FakeFeedServer, fetcher: Fetcher) -> None:
    server.add("/final", RSS)
    first = server.redirect_chain("/hop", 6, "/final")
    with pytest.raises(FetchError) as info:
        await fetcher.get(server.url(first))
    assert info.value.kind == "too_many_redirects"
    assert server.hits("/final") == 0
    server.redirect("/loop", "/loop")
    with pytest.raises(FetchError) as info:
        await fetcher.get(server.url("/loop"))
    assert info.value.kind == "too_many_redirects"
    assert server.hits("/loop") == 6


async def test_relative_redirects_and_status_codes(server: FakeFeedServer, fetcher: Fetcher) -> None:
    server.add("/a/b/feed.xml", RSS)
    server.redirect("/a/start", "b/feed.xml", status=301)
    server.redirect("/x/y", "../a/start", status=308)
    server.redirect("/see-other", "/a/b/feed.xml", status=303)
    response = await fetcher.get(server.url("/x/y"))
    assert response.url == server.url("/a/b/feed.xml")
    assert response.redirects == [server.url("/x/y"), server.url("/a/start")]
    assert (await fetcher.get(server.url("/see-other"))).body == RSS


async def test_credentials_do_not_follow_cross_origin_redirects(server: FakeFeedServer, fetcher: Fetcher) -> None:
    async with FakeFeedServer() as other:  # same address, other port: another origin
        other.add("/feed", RSS)
        server.redirect("/go", other.url("/feed"))
        await fetcher.get(server.url("/go"), headers={"Authorization": "Bearer s3cret", "X-Keep": "1"})
        assert server.last_request("/go").headers["Authorization"] == "Bearer s3cret"
        forwarded = other.last_request("/feed").headers
        assert "Authorization" not in forwarded
        assert "X-Keep" not in forwarded  # any configured header may be a credential (see the test below)


async def test_no_configured_header_follows_a_redirect_to_another_origin(
    server: FakeFeedServer, fetcher: Fetcher
) -> None:
    configured = {
        "Accept": "application/rss+xml",
        "Authorization": "Bearer s3cret",
        "Cookie": "session=s3cret",
        "X-Api-Key": "s3cret",
        "Private-Token": "s3cret",
        "X-Custom-Auth": "s3cret",
    }
    async with FakeFeedServer() as other:  # same address, other port: another origin
        other.add("/feed", RSS)
        server.redirect("/same", "/hop")  # a same-origin hop first: everything is kept there
        server.redirect("/hop", other.url("/feed"))
        await fetcher.get(server.url("/same"), headers=configured, etag='"v1"')
        kept = server.last_request("/hop").headers
        assert {name: kept.get(name) for name in configured} == configured
        forwarded = other.last_request("/feed").headers
        leaked = {name: forwarded[name] for name in forwarded if "s3cret" in forwarded[name]}
        assert leaked == {}
        # What only describes the request, not who makes it, still follows.
        assert forwarded["Accept"] == "application/rss+xml" and forwarded["If-None-Match"] == '"v1"'


# ---- bodies and caps --------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_compression_bomb_stops_at_the_cap(server: FakeFeedServer, fetcher: Fetcher, encoding: str) -> None:
    route = server.bomb("/bomb", decompressed_size=32 * 1024 * 1024, encoding=encoding)
    assert len(route.body) < 256 * 1024  # tiny on the wire
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        await fetcher.get(server.url("/bomb"), max_bytes=256 * 1024)
    assert info.value.kind == "too_large"
    assert "256" in str(info.value) or "262144" in str(info.value)
    assert "decompression" in str(info.value)
    assert time.monotonic() - started < 2


async def test_cap_counts_decompressed_bytes(server: FakeFeedServer, fetcher: Fetcher) -> None:
    text = (b"<item>repetitive feed content</item>\n" * 3000)[:100_000]
    server.add("/gz", text, encoding="gzip")
    compressed = len(gzip.compress(text))
    assert compressed < 10_000  # the wire size is far below every cap used here
    response = await fetcher.get(server.url("/gz"), max_bytes=100_000)
    assert response.body == text  # exactly at the cap is fine, and the body is decompressed
    with pytest.raises(FetchError) as info:
        await fetcher.get(server.url("/gz"), max_bytes=99_999)
    assert info.value.kind == "too_large"


async def test_declared_length_over_cap_is_refused_before_reading(server: FakeFeedServer, fetcher: Fetcher) -> None:
    server.add("/big", b"x" * 50_000)
    with pytest.raises(FetchError) as info:
        await fetcher.get(server.url("/big"), max_bytes=10_000)
    assert info.value.kind == "too_large"
    assert "Content-Length 50000" in str(info.value)
    # the connection is dropped, not poisoned: the next fetch works
    server.add("/small", RSS)
    assert (await fetcher.get(server.url("/small"))).body == RSS


def test_bomb_helper_really_expands() -> None:
    bomb = make_bomb(4 * 1024 * 1024, "gzip")
    assert len(gzip.decompress(bomb)) == 4 * 1024 * 1024
    assert len(bomb) < 16 * 1024


# ---- conditional GET and server hints --------------------------------------------------------------------


async def test_etag_and_last_modified_give_304(server: FakeFeedServer, fetcher: Fetcher) -> None:
    stamp = "Wed, 01 May 2024 10:00:00 GMT"
    server.add("/feed", RSS, etag='"v1"', last_modified=stamp)
    first = await fetcher.get(server.url("/feed"))
    assert first.status == 200 and first.etag == '"v1"' and first.last_modified == stamp
    again = await fetcher.get(server.url("/feed"), etag=first.etag)
    assert again.status == 304 and again.not_modified and again.body == b""
    assert server.last_request("/feed").headers["If-None-Match"] == '"v1"'
    by_date = await fetcher.get(server.url("/feed"), last_modified=stamp)
    assert by_date.not_modified
    assert server.last_request("/feed").headers["If-Modified-Since"] == stamp
    server.routes["/feed"].etag = '"v2"'
    changed = await fetcher.get(server.url("/feed"), etag='"v1"')
    assert changed.status == 200 and changed.etag == '"v2"' and changed.body == RSS


async def test_retry_after_seconds_on_429(server: FakeFeedServer, fetcher: Fetcher) -> None:
    server.add("/limited", b"slow down", status=429, headers={"Retry-After": "120"})
    before = datetime.now(UTC)
    with pytest.raises(FetchError) as info:
        await fetcher.get(server.url("/limited"))
    error = info.value
    assert error.kind == "http_status" and error.status == 429
    assert "429" in str(error) and "rate limited" in str(error)
    assert error.retry_after is not None
    assert before + timedelta(seconds=119) <= error.retry_after <= datetime.now(UTC) + timedelta(seconds=121)


async def test_retry_after_http_date_on_503(server: FakeFeedServer, fetcher: Fetcher) -> None:
    when = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    server.add("/down", b"", status=503, headers={"Retry-After": format_datetime(when, usegmt=True)})
    with pytest.raises(FetchError) as info:
        await fetcher.get(server.url("/down"))
    assert info.value.status == 503
    assert info.value.retry_after == when


async def test_other_statuses_are_http_errors(server: FakeFeedServer, fetcher: Fetcher) -> None:
    server.add("/gone", b"", status=410)
    server.add("/cf", b"", status=403, headers={"cf-mitigated": "challenge"})
    with pytest.raises(FetchError) as info:
        await fetcher.get(server.url("/nowhere"))
    assert (info.value.kind, info.value.status) == ("http_status", 404)
    assert "not found" in str(info.value)
    with pytest.raises(FetchError) as info:
        await fetcher.get(server.url("/gone"))
    assert info.value.status == 410 and "gone" in str(info.value)
    with pytest.raises(FetchError) as info:
        await fetcher.get(server.url("/cf"))
    assert "Cloudflare" in str(info.value)
    assert info.value.retry_after is None


async def test_success_exposes_max_age_and_retry_after(server: FakeFeedServer, fetcher: Fetcher) -> None:
    server.add("/feed", RSS, headers={"Cache-Control": "public, max-age=300", "Retry-After": "60"})
    response = await fetcher.get(server.url("/feed"))
    assert response.max_age == 300
    assert response.retry_after_at is not None
    assert timedelta(seconds=55) < response.retry_after_at - datetime.now(UTC) <= timedelta(seconds=60)


def test_header_parsers() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("30", now) == now + timedelta(seconds=30)
    assert parse_retry_after("Wed, 01 May 2024 13:00:00 GMT", now) == now + timedelta(hours=1)
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", now) == now  # past dates mean "now"
    assert parse_retry_after("99999999999999", now) == now + timedelta(days=30)
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
    assert parse_max_age("no-cache, max-age=0") == 0
    assert parse_max_age('private, max-age="600"') == 600
    assert parse_max_age("s-maxage=10") is None
    assert parse_max_age(None) is None


# ---- timeouts and transport errors -----------------------------------------------------------------------


async def test_slow_headers_time_out(server: FakeFeedServer, fetcher: Fetcher) -> None:
    server.add("/slow", RSS, delay=3)
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        await fetcher.get(server.url("/slow"), timeout=0.3)
    assert info.value.kind == "timeout"
    assert "0.3 s" in str(info.value)
    assert time.monotonic() - started < 1.5


async def test_stalled_body_times_out(server: FakeFeedServer, fetcher: Fetcher) -> None:
    server.add("/stall", RSS, body_delay=3)
    with pytest.raises(FetchError) as info:
        await fetcher.get(server.url("/stall"), timeout=0.3)
    assert info.value.kind == "timeout"


async def test_timeout_covers_the_whole_redirect_chain(server: FakeFeedServer, fetcher: Fetcher) -> None:
    for i in range(3):
        server.add(f"/s{i}", b"", status=302, headers={"Location": f"/s{i + 1}"}, delay=0.15, content_type=None)
    server.add("/s3", RSS)
    with pytest.raises(FetchError) as info:
        await fetcher.get(server.url("/s0"), timeout=0.3)
    assert info.value.kind == "timeout"


async def test_connection_refused(fetcher: Fetcher) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FetchError) as info:
        await fetcher.get(f"http://127.0.0.1:{port}/feed")
    assert info.value.kind == "connection"
    assert f"127.0.0.1:{port}" in str(info.value)


async def test_tls_failure_is_classified(server: FakeFeedServer, fetcher: Fetcher) -> None:
    server.add("/feed", RSS)
    with pytest.raises(FetchError) as info:
        await fetcher.get(f"https://127.0.0.1:{server.port}/feed")  # plain HTTP behind an https URL
    assert info.value.kind == "tls"


async def test_garbage_response_is_a_connection_error(fetcher: Fetcher) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"SSH-2.0-OpenSSH_9.0\r\n\r\n")
        await writer.drain()
        writer.close()

    tcp = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    try:
        with pytest.raises(FetchError) as info:
            await fetcher.get(f"http://127.0.0.1:{port}/")
    finally:
        tcp.close()
        await tcp.wait_closed()
    assert info.value.kind == "connection"


async def test_per_host_concurrency_cap(server: FakeFeedServer) -> None:
    server.add("/feed", RSS, delay=0.1)
    async with Fetcher(allow_networks=LOOPBACK, per_host_limit=2) as f:
        results = await asyncio.gather(*(f.get(server.url("/feed")) for _ in range(6)))
    assert all(r.status == 200 for r in results)
    assert server.max_in_flight == 2


# ---- API details -----------------------------------------------------------------------------------------


def test_fetch_error_pickles_with_its_fields() -> None:
    when = datetime(2024, 5, 1, tzinfo=UTC)
    error = FetchError("http_status", "HTTP 429 from x: rate limited", status=429, retry_after=when, url="http://x/")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.kind, copy.status, copy.retry_after, copy.url, str(copy)) == (
        "http_status",
        429,
        when,
        "http://x/",
        "HTTP 429 from x: rate limited",
    )
    with pytest.raises(ValueError):
        FetchError("nonsense", "x")


async def test_fetcher_must_be_started() -> None:
    fetcher = Fetcher()
    with pytest.raises(RuntimeError, match="not started"):
        await fetcher.get("http://example.com/")
    with pytest.raises(ValueError, match="per_host_limit"):
        Fetcher(per_host_limit=0)


async def test_queueing_for_a_host_slot_does_not_count_against_the_timeout(server: FakeFeedServer) -> None:
    server.add("/feed", RSS, delay=0.2)
    async with Fetcher(allow_networks=LOOPBACK, per_host_limit=1) as f:
        results = await asyncio.gather(*(f.get(server.url("/feed"), timeout=0.5) for _ in range(4)))
    assert [r.status for r in results] == [200] * 4
    assert server.max_in_flight == 1


def test_fake_server_binds_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        FakeFeedServer(host="0.0.0.0")
