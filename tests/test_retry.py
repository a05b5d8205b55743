"""The one retry policy (infosentry.retry): what is retryable, how long to wait, and Retry-After."""

from __future__ import annotations

import random

import pytest

from infosentry import retry
from infosentry.mail import SmtpPermanentError, SmtpTemporaryError, _by_code


@pytest.mark.parametrize("status", [None, 408, 409, 425, 429, 500, 502, 503, 504])
def test_retryable_answers(status: int | None) -> None:
    assert retry.retryable_status(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 501])
def test_answers_about_the_request_itself_are_final(status: int) -> None:
    assert not retry.retryable_status(status)


def test_smtp_follows_the_same_rule_for_its_codes() -> None:
    assert retry.retryable_smtp(None) and retry.retryable_smtp(451) and not retry.retryable_smtp(550)
    assert isinstance(_by_code(451, "try later"), SmtpTemporaryError)
    assert isinstance(_by_code(550, "no such user"), SmtpPermanentError)


def test_backoff_doubles_up_to_its_cap_within_the_jitter() -> None:
    policy = retry.Backoff(base=1.0, cap=10.0, jitter=0.25)
    rng = random.Random(7)
    for failures, plain in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (60, 10.0)]:
        for _ in range(20):
            assert plain * 0.75 <= policy.delay(failures, rng=rng) <= plain * 1.25


def test_a_servers_retry_after_wins_up_to_the_policys_limit() -> None:
    assert retry.EMBEDDINGS.delay(1, retry_after=7.5) == 7.5
    assert retry.EMBEDDINGS.delay(1, retry_after=600) == 60.0  # capped: a broken header cannot stall us
    assert retry.JUDGE.delay(1, retry_after=45) == 45  # uncapped: the judge gives up instead (JUDGE_MAX_WAIT)


def test_the_policies_in_use() -> None:
    assert [round(retry.EMAIL.delay(n, rng=random.Random(1)) / 30) for n in (1, 2, 3)] == [1, 2, 4]
    assert retry.EMAIL.delay(20) <= 3600 * 1.1
    assert retry.source_backoff(900, 3, cap=86400) == 3600 and retry.source_backoff(900, 30, cap=86400) == 86400


def test_retry_after_headers() -> None:
    assert retry.retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry.retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry.retry_after_seconds({"retry-after": "soon"}) is None
    assert retry.retry_after_seconds(None) is None


def _raised(*chain: BaseException) -> BaseException:
    """The last exception of `chain`, each raised from the one before (as openai wraps httpx2 wraps aiohttp)."""
    caught: BaseException | None = None
    for exc in chain:
        try:
            raise exc from caught
        except BaseException as e:
            caught = e
    assert caught is not None
    return caught


def test_a_refused_connection_behind_a_timeout_error_is_not_a_timeout() -> None:
    """The openai client's aiohttp transport maps every aiohttp connection error to a connect timeout; the error
    behind it decides (aiohttp's own timeouts are connection errors too, and stay timeouts)."""
    import aiohttp

    assert not retry.timed_out(_raised(aiohttp.ServerDisconnectedError(), TimeoutError("connect timeout")))
    assert not retry.timed_out(_raised(ConnectionRefusedError(), aiohttp.ClientConnectionError(), TimeoutError()))
    assert retry.timed_out(_raised(aiohttp.ServerTimeoutError("read"), TimeoutError("read timeout")))
    assert retry.timed_out(_raised(TimeoutError("plain")))
