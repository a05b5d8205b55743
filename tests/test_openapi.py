"""The OpenAPI description is generated from the real route table and cannot drift from it."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from infosentry import openapi
from infosentry.api import routes


def table() -> set[tuple[str, str]]:
    return {(r.method, r.path) for r in openapi.routes_of(routes())}


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    assert openapi.undocumented(routes()) == [], "document these routes (@openapi.doc or openapi.describe)"
    assert openapi.stale(routes()) == [], "these openapi.describe entries name no route"
    spec = openapi.build(routes())
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert documented == table()


def test_the_checks_catch_drift() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    extra = [*routes(), web.get("/api/v1/nowhere", handler)]
    assert openapi.undocumented(extra) == [("GET", "/api/v1/nowhere")]
    openapi.describe("GET", "/api/v1/ghost", "a route that does not exist")
    try:
        assert openapi.stale(routes()) == [("GET", "/api/v1/ghost")]
    finally:
        del openapi.REGISTRY[("GET", "/api/v1/ghost")]


def test_operations_carry_scope_params_and_problem_responses() -> None:
    spec = openapi.build(routes())
    assert spec["openapi"] == "3.1.0"
    ids = set()
    for path, ops in spec["paths"].items():
        names = re.findall(r"\{(\w+)\}", path)
        for method, op in ops.items():
            ids.add(op["operationId"])
            assert op["summary"] and op["summary"] != "undocumented route", (method, path)
            assert [p["name"] for p in op["parameters"] if p["in"] == "path"] == names
            assert any(code.startswith("2") or code.startswith("3") for code in op["responses"]), (method, path)
            problem = op["responses"]["422"]["content"]["application/problem+json"]["schema"]
            assert problem["required"] == ["type", "title", "status", "detail"]
            if path.startswith("/api/v1/") and op["security"]:
                assert op["x-required-scope"] in _all_scopes()
                assert "401" in op["responses"] and "403" in op["responses"]
    assert len(ids) == sum(len(ops) for ops in spec["paths"].values())  # operation ids are unique
    admin = spec["paths"]["/api/v1/admin/config"]["post"]
    assert admin["x-required-scope"] == "admin:write" and admin["requestBody"]["required"]
    assert spec["paths"]["/api/v1/auth/request_link"]["post"]["security"] == []


def _all_scopes() -> set[str]:
    from infosentry.auth import ALL_SCOPES

    return set(ALL_SCOPES)


async def test_served_document_is_the_generated_one(api: Any) -> None:
    resp = await api.get("/api/v1/openapi.json")
    assert resp.status == 200
    served = await resp.json()
    assert served == openapi.build(routes())
    assert set(served["paths"]) == {p for _, p in table()}
