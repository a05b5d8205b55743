"""Decision runs: /api/v1/agent/runs (the caller's own runs only), one run in full, and replay.

A run's `input` is the full snapshot the decision was made on (goal, item, match, thresholds, switches,
budget); replay re-decides from it — with the stored LLM answer, or a live call when `use_llm` is true — under
the current thresholds (default) or the stored ones, and returns the differences without changing anything.
A live replay is the one handler that calls an external service itself: one attempt, 15 s timeout, budget-gated
(the caller asked for exactly that call and waits for its answer). Imports domain.runs, api.http.
"""

from __future__ import annotations

from aiohttp import web

from infosentry import openapi
from infosentry.api.http import ok, page, paged, path_id, principal, query_int, read_json, requires, rt
from infosentry.domain import runs
from infosentry.domain.runs import TRIGGERS
from infosentry.errors import BadRequest
from infosentry.openapi import BOOL, INT, NUM, PAGE_PARAMS, STR, TIME, arr, enum, null, obj, page_of, qparam

STATUS = enum("SUCCESS", "FALLBACK", "ERROR")
RUN = obj(
    {
        "id": INT,
        "goal_id": INT,
        "goal_name": STR,
        "item_id": null(INT),
        "trigger": enum(*TRIGGERS),
        "status": STATUS,
        "tier": null(enum("IMMEDIATE", "BATCH", "DIGEST", "IGNORE")),
        "llm_used": BOOL,
        "llm_model": null(STR),
        "fallback_reason": null(STR),
        "prompt_tokens": INT,
        "completion_tokens": INT,
        "usd": NUM,
        "latency_ms": INT,
        "created_at": TIME,
    }
)
RUN_DETAIL = {
    "allOf": [
        RUN,
        obj(
            {
                "input": {
                    "type": "object",
                    "description": "the snapshot: goal, item, match, thresholds, switches, "
                    "budget (decision runs); what a push step considered (push runs)",
                },
                "output": {"type": "object", "description": "tier, status, reason, rule, fallback_reason, judge"},
                "llm_request": {"description": "model, parameters and messages sent to the judge"},
                "llm_response": {"description": "answer, usage, attempts (HTTP status, latency, error)"},
                "decision": null(
                    obj(
                        {
                            "id": INT,
                            "tier": STR,
                            "status": STR,
                            "score": NUM,
                            "reason": STR,
                            "decided_at": TIME,
                            "pushed_at": null(TIME),
                        }
                    )
                ),
            },
            ["input", "output"],
        ),
    ]
}
OUTCOME = obj(
    {"tier": STR, "status": STR, "run_status": STATUS, "reason": STR, "fallback_reason": null(STR), "prelim": STR}, []
)
REPLAY = obj(
    {
        "run_id": INT,
        "use_llm": BOOL,
        "thresholds": enum("current", "stored"),
        "policy": {"type": "object", "description": "thresholds and switches the replay used"},
        "stored_policy": {"type": "object", "description": "thresholds and switches of the original run"},
        "original": OUTCOME,
        "replayed": OUTCOME,
        "llm": {"type": "object", "description": "needed, source (live, stored, none), answer"},
        "differences": arr(obj({"field": STR, "original": {}, "replayed": {}})),
        "changed": BOOL,
    }
)


@openapi.doc(
    "The caller's decision runs, newest first (decisions, and the push steps: flushes, windows, digests)",
    query=[
        *PAGE_PARAMS,
        qparam("goal_id", INT, "only this goal"),
        qparam("item_id", INT, "only this item"),
        qparam("status", STATUS),
        qparam("trigger", enum(*TRIGGERS)),
    ],
    response=page_of(RUN),
)
@requires("agent:read")
async def list_runs(request: web.Request) -> web.Response:
    pg = page(request)
    before = None
    if pg.after is not None:
        if len(pg.after) != 1 or not isinstance(pg.after[0], int):
            raise BadRequest("cursor is not valid")
        before = pg.after[0]
    rows = await runs.runs(
        rt(request),
        principal(request),
        goal_id=query_int(request, "goal_id", None, low=1),
        item_id=query_int(request, "item_id", None, low=1),
        status=request.query.get("status") or None,
        trigger=request.query.get("trigger") or None,
        before_id=before,
        limit=pg.limit + 1,
    )
    return ok(paged(rows, pg, lambda r: [r["id"]]))


@openapi.doc("One run in full: input snapshot, output, LLM request and response, decision", response=RUN_DETAIL)
@requires("agent:read")
async def get_run(request: web.Request) -> web.Response:
    return ok(await runs.run(rt(request), principal(request), path_id(request)))


@openapi.doc(
    "Re-decide a run from its stored input and return the differences; changes nothing",
    description="`use_llm` false (default) reuses the stored LLM answer; true asks the judge again (one paid "
    "call, budget-gated; not cached). `thresholds` 'current' (default) applies today's hot thresholds and "
    "switches, 'stored' the ones the run was made under. Only decision runs (trigger 'match') can be replayed.",
    body=obj(
        {"use_llm": {**BOOL, "default": False}, "thresholds": {**enum("current", "stored"), "default": "current"}},
        [],
        extra=False,
    ),
    body_required=False,
    response=REPLAY,
)
@requires("agent:write")
async def replay_run(request: web.Request) -> web.Response:
    body = await read_json(request) if request.can_read_body else {}
    return ok(await runs.replay(rt(request), principal(request), path_id(request), body))


ROUTES: list[web.RouteDef] = [
    web.get("/api/v1/agent/runs", list_runs),
    web.get("/api/v1/agent/runs/{id}", get_run),
    web.post("/api/v1/agent/runs/{id}/replay", replay_run),
]
