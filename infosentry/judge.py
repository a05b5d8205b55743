"""The LLM boundary judge: IMMEDIATE or BATCH for an item in the boundary band, as validated JSON.

One paid call per (item, goal, goal version): answers are cached in judge_cache. Every HTTP attempt is
recorded (budget.record_call, kind "judge"), tokens and USD are charged to the budget day, 429/5xx and
timeouts are retried with backoff (Retry-After honoured), and every failure comes back as a Judgment with
`fallback_reason` set, never as an exception: the caller turns it into BATCH (FALLBACK).
Imports budget, store.decisions and the openai client through the Runtime.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import string
import time
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from infosentry import budget, retry
from infosentry.runtime import Runtime
from infosentry.store import decisions as decisions_store

log = logging.getLogger(__name__)

LABELS = ("IMMEDIATE", "BATCH")
REASON_MAX = 120
MAX_ATTEMPTS = 3
ATTEMPT_TIMEOUT = 20.0  # seconds per HTTP attempt
MAX_TOKENS = 200
_SNIPPET_MAX = 600
_DESCRIPTION_MAX = 1200


@dataclass
class Judgment:
    """The judge's answer, or why there is none (`fallback_reason`)."""

    label: str | None = None
    confidence: float | None = None
    reason: str | None = None
    cached: bool = False
    fallback_reason: str | None = None
    unexpected: bool = False  # an error we did not plan for (the run is marked ERROR, the item goes to BATCH)
    model: str = ""
    request: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd: float = 0.0
    latency_ms: int = 0
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.label in LABELS and self.fallback_reason is None

    @property
    def called(self) -> bool:
        return bool(self.attempts)

    def summary(self) -> dict[str, Any]:
        """What a run's output keeps of the judgment (the full request/response go to their own columns)."""
        return {
            "label": self.label,
            "confidence": self.confidence,
            "reason": self.reason,
            "cached": self.cached,
            "fallback_reason": self.fallback_reason,
            "model": self.model,
            "attempts": len(self.attempts),
        }


# --- the prompt --------------------------------------------------------------------------------------------


@cache
def _prompt_parts() -> tuple[str, str, str]:
    """(system template, user template, version hash) of prompts/boundary_judge.md."""
    text = (resources.files("infosentry") / "prompts" / "boundary_judge.md").read_text("utf-8")
    parts = re.split(r"^=== (system|user) ===[ \t]*$", text, flags=re.MULTILINE)
    # parts: [documentation, 'system', system text, 'user', user text]
    system, user = (parts[2], parts[4]) if len(parts) == 5 and parts[1::2] == ["system", "user"] else ("", "")
    if not system.strip() or not user.strip():
        raise RuntimeError("prompts/boundary_judge.md needs '=== system ===' and '=== user ===' parts")
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    return system.strip(), user.strip(), version


def _clip(value: Any, limit: int) -> str:
    text = " ".join(str(value or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _components(components: Any) -> str:
    if not isinstance(components, dict):
        return "-"
    parts = []
    for key, value in components.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.3f}")
        elif isinstance(value, (int, str, bool)) or value is None:
            parts.append(f"{key}={value}")
        else:
            parts.append(f"{key}={_clip(json.dumps(value, ensure_ascii=False), 80)}")
    return _clip(", ".join(parts), 600) or "-"


def _reasons(reasons: Any) -> str:
    if isinstance(reasons, list):
        texts = [
            r
            if isinstance(r, str)
            else (r.get("text") or r.get("detail") or json.dumps(r, ensure_ascii=False))
            if isinstance(r, dict)
            else str(r)
            for r in reasons
        ]
        return _clip("; ".join(texts), 600) or "-"
    return _clip(reasons, 600) or "-"


def build_messages(snapshot: dict[str, Any]) -> list[dict[str, str]]:
    """The chat messages for one decision snapshot (goal, item, match, thresholds)."""
    system, user, _ = _prompt_parts()
    goal, item, match = snapshot["goal"], snapshot["item"], snapshot["match"]
    thresholds = snapshot["thresholds"]
    values = {
        "goal_name": _clip(goal.get("name"), 100),
        "goal_description": _clip(goal.get("description"), _DESCRIPTION_MAX),
        "priority_terms": _clip(", ".join(goal.get("priority_terms") or []), 300) or "(none)",
        "priority_mode": goal.get("priority_mode") or "SOFT",
        "item_title": _clip(item.get("title"), 300),
        "item_source": _clip(item.get("source_name"), 100) or "-",
        "item_published": item.get("published_at") or item.get("ingested_at") or "-",
        "item_snippet": _clip(item.get("snippet"), _SNIPPET_MAX) or "(none)",
        "score": f"{float(match['score']):.3f}",
        "immediate_threshold": f"{float(thresholds['IMMEDIATE_THRESHOLD']):.2f}",
        "boundary_low": f"{float(thresholds['BOUNDARY_LOW']):.2f}",
        "components": _components(match.get("components")),
        "reasons": _reasons(match.get("reasons")),
    }
    return [
        {"role": "system", "content": string.Template(system).safe_substitute(values)},
        {"role": "user", "content": string.Template(user).safe_substitute(values)},
    ]


# --- validation --------------------------------------------------------------------------------------------


class InvalidAnswer(ValueError):
    pass


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)


def parse_answer(content: str | None) -> tuple[str, float, str]:
    """Validate the model's answer against {label IMMEDIATE|BATCH, confidence 0-1, reason 1-120 chars}."""
    if not content or not content.strip():
        raise InvalidAnswer("empty answer")
    text = _FENCE.sub("", content.strip())
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidAnswer(f"not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise InvalidAnswer("answer is not a JSON object")
    label = data.get("label")
    if not isinstance(label, str) or label.strip().upper() not in LABELS:
        raise InvalidAnswer(f"label must be IMMEDIATE or BATCH, got {label!r}")
    confidence = data.get("confidence")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 <= confidence <= 1:
        raise InvalidAnswer(f"confidence must be a number from 0 to 1, got {confidence!r}")
    reason = data.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidAnswer("reason must be a non-empty string")
    reason = " ".join(reason.split())
    if len(reason) > REASON_MAX:
        raise InvalidAnswer(f"reason is {len(reason)} characters, at most {REASON_MAX} allowed")
    return label.strip().upper(), float(confidence), reason


def cites_evidence(reason: str, snapshot: dict[str, Any]) -> bool:
    """Does the reason quote something it was given (a term, a title word, a number)? Recorded, not enforced:
    a model that paraphrases well should not be punished, but an operator can query for uncited reasons."""
    evidence = " ".join(
        [
            str(snapshot["item"].get("title") or ""),
            str(snapshot["item"].get("snippet") or ""),
            " ".join(snapshot["goal"].get("priority_terms") or []),
            str(snapshot["goal"].get("description") or ""),
            _reasons(snapshot["match"].get("reasons")),
            f"{float(snapshot['match']['score']):.2f}",
        ]
    ).lower()
    words = re.findall(r"[a-z0-9][a-z0-9.+-]{3,}", reason.lower())
    if any(w in evidence for w in words):
        return True
    cjk = re.findall(r"[\u4e00-\u9fff]{2}", reason)  # any two-character CJK run quoted from the evidence
    return any(c in evidence for c in cjk)


# --- the call ----------------------------------------------------------------------------------------------


def _retry_after(exc: Any) -> float | None:
    return retry.retry_after_seconds(getattr(getattr(exc, "response", None), "headers", None))


def usd_of(rt: Runtime, prompt_tokens: int, completion_tokens: int) -> float:
    s = rt.settings
    return (prompt_tokens * s.judge_usd_per_mtok_in + completion_tokens * s.judge_usd_per_mtok_out) / 1_000_000


async def judge(
    rt: Runtime,
    snapshot: dict[str, Any],
    *,
    use_cache: bool = True,
    write_cache: bool = True,
    max_attempts: int = MAX_ATTEMPTS,
    attempt_timeout: float = ATTEMPT_TIMEOUT,
) -> Judgment:
    """Judge one decision snapshot. Never raises for LLM trouble: failures come back as fallback_reason."""
    started = time.perf_counter()
    model = rt.settings.openai_judge_model
    goal, item = snapshot["goal"], snapshot["item"]
    result = Judgment(model=model)
    try:
        if use_cache:
            cached = await decisions_store.cached_judgment(rt.pool, item["id"], goal["id"], goal["version"])
            if cached is not None:
                result.label, result.confidence, result.reason = cached["label"], cached["confidence"], cached["reason"]
                result.cached, result.model = True, cached["model"]
                result.response = {"cached": True, "created_at": cached["created_at"].isoformat()}
                return result
        if not rt.hot["LLM_ENABLED"]:
            result.fallback_reason = "LLM_ENABLED is false"
            return result
        if not rt.settings.openai_api_key:
            result.fallback_reason = "no OPENAI_API_KEY configured"
            return result
        allowed, why = await budget.allow(rt, "judge")
        if not allowed:
            result.fallback_reason = f"budget breaker open: {why or 'cap reached'}"
            return result
        await _call(rt, snapshot, result, max_attempts=max_attempts, attempt_timeout=attempt_timeout)
        if result.ok and write_cache:
            await decisions_store.cache_judgment(
                rt.pool,
                item["id"],
                goal["id"],
                goal["version"],
                result.label,
                result.confidence or 0.0,
                result.reason or "",
                model,
            )
        return result
    except Exception as exc:  # our own bug or the database: still a decision (BATCH), marked ERROR
        log.exception("judge failed unexpectedly", extra={"action": "judge_error"})
        result.fallback_reason = f"error: {type(exc).__name__}: {_clip(exc, 200)}"
        result.unexpected = True
        result.label = None
        return result
    finally:
        result.latency_ms = int((time.perf_counter() - started) * 1000)


async def _call(
    rt: Runtime, snapshot: dict[str, Any], result: Judgment, *, max_attempts: int, attempt_timeout: float
) -> None:
    import openai

    messages = build_messages(snapshot)
    _, _, prompt_version = _prompt_parts()
    request = {
        "model": result.model,
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
        "response_format": {"type": "json_object"},
        "messages": messages,
    }
    result.request = {**request, "prompt": "boundary_judge", "prompt_version": prompt_version}
    client = rt.llm()
    for attempt in range(1, max_attempts + 1):
        t0 = time.perf_counter()
        status: int | None = None
        error: str | None = None
        wait: float | None = None
        response = None
        try:
            response = await client.chat.completions.create(**request, timeout=attempt_timeout)
            status = 200
        except openai.APIStatusError as exc:
            status = exc.status_code
            error = f"HTTP {status}: {_clip(exc.message, 200)}"
            if retry.retryable_status(status):
                wait = _retry_after(exc)
        except openai.APITimeoutError as exc:
            error = (
                f"timeout after {attempt_timeout:g} s"
                if retry.timed_out(exc)
                else f"connection failed: {_clip(exc, 200)}"
            )
        except openai.APIConnectionError as exc:
            error = f"connection failed: {_clip(exc, 200)}"
        except (openai.APIResponseValidationError, ValueError) as exc:
            # a 200 whose body is not the JSON envelope: an invalid answer, not worth a retry
            latency = int((time.perf_counter() - t0) * 1000)
            error = f"invalid response body: {_clip(exc, 200)}"
            result.attempts.append({"attempt": attempt, "http_status": 200, "latency_ms": latency, "error": error})
            result.response = {"attempts": result.attempts}
            await budget.record_call(rt, "judge", ok=False, http_status=200, error=error, latency_ms=latency)
            result.fallback_reason = f"invalid LLM output: {error}"
            return
        latency = int((time.perf_counter() - t0) * 1000)
        record: dict[str, Any] = {"attempt": attempt, "http_status": status, "latency_ms": latency, "error": error}
        result.attempts.append(record)
        if response is None:
            await budget.record_call(rt, "judge", ok=False, http_status=status, error=error, latency_ms=latency)
            retryable = retry.retryable_status(status)
            result.response = {"attempts": result.attempts}
            if not retryable:
                result.fallback_reason = f"LLM error: {error}"
                return
            if attempt == max_attempts:
                result.fallback_reason = f"LLM error after {attempt} attempts: {error}"
                return
            delay = retry.JUDGE.delay(attempt, retry_after=wait)
            if delay > retry.JUDGE_MAX_WAIT:
                result.fallback_reason = f"LLM asked to retry after {delay:.0f} s: {error}"
                return
            await asyncio.sleep(delay)
            continue
        # an answer: charge what it cost whatever it says
        usage = getattr(response, "usage", None)
        result.prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        result.completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        result.usd = usd_of(rt, result.prompt_tokens, result.completion_tokens)
        await budget.charge(
            rt, "judge", prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens, calls=1
        )
        content = None
        if getattr(response, "choices", None):
            content = response.choices[0].message.content
        result.response = {
            "content": _clip(content, 2000) if content is not None else None,
            "finish_reason": response.choices[0].finish_reason if response.choices else None,
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens},
            "usd": round(result.usd, 8),
            "attempts": result.attempts,
        }
        try:
            label, confidence, reason = parse_answer(content)
        except InvalidAnswer as exc:
            record["error"] = f"invalid output: {exc}"
            await budget.record_call(
                rt, "judge", ok=False, http_status=status, error=record["error"], latency_ms=latency
            )
            result.fallback_reason = f"invalid LLM output: {exc}"
            return
        await budget.record_call(rt, "judge", ok=True, http_status=status, error=None, latency_ms=latency)
        result.label, result.confidence, result.reason = label, confidence, reason
        result.response["cites_evidence"] = cites_evidence(reason, snapshot)
        return


# --- term suggestions (the goal form) -----------------------------------------------------------------------

SUGGEST_TIMEOUT = 8.0  # one attempt: the form must never wait long for it
SUGGEST_MAX = 8
_SUGGEST_SYSTEM = (
    "You help a reader set up a news alert. Given the alert's name and description, answer a JSON object "
    '{"terms": [...]} with up to 8 short keywords (names of companies, products, people, places, technical '
    "terms) that news items on this topic would contain. No generic words, no duplicates of words already listed. "
    "Use the language of the description."
)


async def suggest_terms(rt: Runtime, name: str, description: str, known: list[str]) -> tuple[list[str] | None, str]:
    """Priority terms for a goal being written, from the LLM: (terms, "") or (None, why not). One short attempt,
    charged to the budget like a judge call; never raises for LLM trouble."""
    if not rt.hot["LLM_ENABLED"]:
        return None, "LLM_ENABLED is false"
    if not rt.settings.openai_api_key:
        return None, "no OPENAI_API_KEY configured"
    allowed, why = await budget.allow(rt, "judge")
    if not allowed:
        return None, why or "budget breaker open"
    import openai  # only now: importing it costs a few hundred ms, and most forms never get here

    user = f"Name: {_clip(name, 100)}\nDescription: {_clip(description, _DESCRIPTION_MAX)}"
    if known:
        user += f"\nAlready listed: {_clip(', '.join(known), 400)}"
    started = time.perf_counter()
    try:
        response = await rt.llm().chat.completions.create(
            model=rt.settings.openai_judge_model,
            temperature=0,
            max_tokens=MAX_TOKENS,
            response_format={"type": "json_object"},
            messages=[{"role": "system", "content": _SUGGEST_SYSTEM}, {"role": "user", "content": user}],
            timeout=SUGGEST_TIMEOUT,
        )
    except (openai.APIError, ValueError) as exc:
        status = getattr(exc, "status_code", None)
        latency = int((time.perf_counter() - started) * 1000)
        await budget.record_call(rt, "judge", ok=False, http_status=status, error=_clip(exc, 200), latency_ms=latency)
        return None, f"LLM error: {_clip(exc, 120)}"
    latency = int((time.perf_counter() - started) * 1000)
    usage = getattr(response, "usage", None)
    await budget.charge(
        rt,
        "judge",
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        calls=1,
    )
    content = response.choices[0].message.content if getattr(response, "choices", None) else None
    try:
        data = json.loads(content or "")
        raw = data.get("terms") if isinstance(data, dict) else None
        if not isinstance(raw, list):
            raise ValueError("no terms list")
    except ValueError as exc:
        await budget.record_call(
            rt, "judge", ok=False, http_status=200, error=f"invalid output: {exc}", latency_ms=latency
        )
        return None, "invalid LLM output"
    await budget.record_call(rt, "judge", ok=True, http_status=200, latency_ms=latency)
    seen = {k.casefold() for k in known}
    terms: list[str] = []
    for term in raw:
        if not isinstance(term, str):
            continue
        term = " ".join(term.split())[:100]
        if term and term.casefold() not in seen:
            seen.add(term.casefold())
            terms.append(term)
    return terms[:SUGGEST_MAX], ""
