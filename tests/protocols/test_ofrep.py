"""OFREP on a live server: the real OFREP provider from PyPI, and the protocol's edges by hand."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import ErrorCode, Reason

from confmesh.client import AdminClient, ConfigClient
from confmesh.server import ConfmeshServer
from tests.conftest import Tenants

USERS = 1_000
FLAGS: dict[str, Any] = {
    "checkout": {"variants": {"on": True, "off": False}, "default_variant": "off",
                 "rules": [{"id": "beta", "clauses": [{"attribute": "tier", "op": "in", "values": ["beta"]}],
                            "serve": {"variant": "on"}}]},
    "split": {"variants": {"new": "new", "old": "old"}, "default_variant": "old",
              "rules": [{"id": "half", "serve": {"split": [{"variant": "new", "percent": 30},
                                                         {"variant": "old", "percent": 70}]}}]},
    "limits": {"variants": {"small": {"max": 5}, "big": {"max": 500}}, "default_variant": "small",
               "metadata": {"owner": "team-a"}},
    "killed": {"variants": {"on": True, "off": False}, "default_variant": "on", "enabled": False},
    "ratio": {"variants": {"low": 0.25, "high": 0.75}, "default_variant": "low"},
}  # fmt: skip


def base_url(server: ConfmeshServer, env: str = "prod") -> str:
    return f"{server.http_url}/environments/{env}"


@pytest.fixture
def of_client(server: ConfmeshServer) -> Iterator[Any]:
    provider = OFREPProvider(base_url(server), timeout=5.0)
    api.set_provider(provider, "ofrep-test")
    yield api.get_client("ofrep-test")
    api.clear_providers()


async def post(
    url: str, body: Any = None, *, raw: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, CIMultiDict[str]]:
    async with aiohttp.ClientSession() as session:
        data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
        async with session.post(
            url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
        ) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None), CIMultiDict(r.headers)


async def test_the_ofrep_provider_evaluates_confmesh_flags(
    server: ConfmeshServer, admin: AdminClient, of_client: Any
) -> None:
    await admin.put_flags("prod", FLAGS)

    def evaluate() -> dict[str, Any]:
        beta = EvaluationContext("user-1", {"tier": "beta"})
        return {
            "beta": of_client.get_boolean_details("checkout", False, beta),
            "plain": of_client.get_boolean_details("checkout", True, EvaluationContext("user-2")),
            "object": of_client.get_object_details("limits", {}, EvaluationContext("user-2")),
            "killed": of_client.get_boolean_details("killed", True, EvaluationContext("user-2")),
            "missing": of_client.get_boolean_details("nope", True, EvaluationContext("user-2")),
            "float": of_client.get_float_details("ratio", 0.5, EvaluationContext("user-2")),
        }

    got = await asyncio.to_thread(evaluate)
    assert (got["beta"].value, got["beta"].variant, got["beta"].reason) == (
        True,
        "on",
        Reason.TARGETING_MATCH,
    )
    assert (got["plain"].value, got["plain"].variant) == (False, "off")
    assert got["object"].value == {"max": 5} and got["object"].flag_metadata == {"owner": "team-a"}
    # Off with no off variant: the caller's default (OFREP's code-default flag: no value).
    assert (got["killed"].value, got["killed"].reason) == (True, Reason.DISABLED)
    assert (got["missing"].value, got["missing"].error_code) == (True, ErrorCode.FLAG_NOT_FOUND)
    assert got["float"].value == 0.25


async def test_ofrep_agrees_with_client_flags_and_sees_a_kill(
    server: ConfmeshServer, admin: AdminClient, of_client: Any
) -> None:
    await admin.put_flags("prod", FLAGS)
    async with ConfigClient(server.address, environment="prod", service="api") as client:
        local = {
            f"user-{n}": client.flags.get_str("split", "?", {"targetingKey": f"user-{n}"})
            for n in range(USERS)
        }

        def remote() -> dict[str, str]:
            return {user: of_client.get_string_value("split", "?", EvaluationContext(user)) for user in local}

        assert await asyncio.to_thread(remote) == local
        assert 0.2 < sum(v == "new" for v in local.values()) / USERS < 0.4

    await admin.put_flags("prod", {"checkout": {**FLAGS["checkout"], "enabled": False, "off_variant": "off"}})
    beta = EvaluationContext("user-1", {"tier": "beta"})
    value = await asyncio.to_thread(of_client.get_boolean_value, "checkout", True, beta)
    assert value is False, "the next evaluation after a write sees it"


async def test_bulk_evaluation_with_etag(server: ConfmeshServer, admin: AdminClient) -> None:
    await admin.put_flags("prod", FLAGS)
    url = f"{base_url(server)}/ofrep/v1/evaluate/flags"
    status, body, headers = await post(url, {"context": {"targetingKey": "user-1", "tier": "beta"}})
    assert status == 200
    by_key = {f["key"]: f for f in body["flags"]}
    assert set(by_key) == set(FLAGS)
    assert by_key["checkout"] == {"key": "checkout", "value": True, "variant": "on",
                                  "reason": "TARGETING_MATCH", "metadata": {}}  # fmt: skip
    assert "value" not in by_key["killed"] and by_key["killed"]["reason"] == "DISABLED"
    etag = headers["ETag"]

    status, body, again = await post(url, {"context": {"targetingKey": "user-1", "tier": "beta"}},
                                     headers={"If-None-Match": etag})  # fmt: skip
    assert (status, body, again["ETag"]) == (304, None, etag)
    status, _, other = await post(
        url, {"context": {"targetingKey": "user-1"}}, headers={"If-None-Match": etag}
    )
    assert status == 200 and other["ETag"] != etag, "another context, another answer"

    await admin.put_flags("prod", {"ratio": {**FLAGS["ratio"], "default_variant": "high"}})
    status, body, changed = await post(url, {"context": {"targetingKey": "user-1", "tier": "beta"}},
                                       headers={"If-None-Match": etag})  # fmt: skip
    assert status == 200 and changed["ETag"] != etag
    assert {f["key"]: f for f in body["flags"]}["ratio"]["value"] == 0.75

    # Missing targeting key: per-flag errors in a 200, the flags that need none still answer.
    status, body, _ = await post(url, {})
    assert status == 200
    by_key = {f["key"]: f for f in body["flags"]}
    assert by_key["split"]["errorCode"] == "TARGETING_KEY_MISSING"
    assert by_key["limits"]["value"] == {"max": 5}


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{not json", 400, "PARSE_ERROR"),
        (b"[1, 2]", 400, "PARSE_ERROR"),
        (b'{"context": "user-1"}', 400, "INVALID_CONTEXT"),
        (b'{"context": {"targetingKey": 7}}', 400, "INVALID_CONTEXT"),
        (b'{"context": {"a": ' + b"[" * 100 + b"]" * 100 + b"}}", 400, "INVALID_CONTEXT"),
        (b'{"context": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 413, "INVALID_CONTEXT"),
        (b'{"context": {"targetingKey": "u", "score": NaN}}', 400, "PARSE_ERROR"),
        (b'{"context": {"targetingKey": "u", "score": -Infinity}}', 400, "PARSE_ERROR"),
        (b'{"context": {"targetingKey": "\\ud800"}}', 400, "PARSE_ERROR"),
    ],
    ids=[
        "bad-json",
        "not-object",
        "context-string",
        "key-number",
        "deep",
        "too-large",
        "nan",
        "infinity",
        "lone-surrogate",
    ],
)
async def test_bad_requests_get_ofrep_errors(
    server: ConfmeshServer, admin: AdminClient, raw: bytes, status: int, code: str | None
) -> None:
    await admin.put_flags("prod", FLAGS)
    got, body, _ = await post(f"{base_url(server)}/ofrep/v1/evaluate/flags/checkout", raw=raw)
    assert got == status
    if code is not None:
        assert body["errorCode"] == code and body["key"] == "checkout" and body["errorDetails"]


async def test_single_evaluation_errors(server: ConfmeshServer, admin: AdminClient) -> None:
    await admin.put_flags("prod", FLAGS)
    status, body, _ = await post(f"{base_url(server)}/ofrep/v1/evaluate/flags/nope", {"context": {}})
    assert status == 404 and body["errorCode"] == "FLAG_NOT_FOUND" and body["key"] == "nope"
    status, body, _ = await post(f"{base_url(server)}/ofrep/v1/evaluate/flags/split", {"context": {}})
    assert status == 400 and body["errorCode"] == "TARGETING_KEY_MISSING"
    status, body, _ = await post(f"{base_url(server, 'Bad Env!')}/ofrep/v1/evaluate/flags/split", {})
    assert status == 400 and body["errorCode"] == "GENERAL" and "environment" in body["errorDetails"]
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url(server)}/ofrep/v1/configuration") as r,
    ):
        config = await r.json()
    assert config["capabilities"]["cacheInvalidation"]["polling"]["enabled"] is True


async def test_ofrep_takes_the_same_tokens_and_grants(tenants: Tenants) -> None:
    async with tenants.admin("admin") as admin:
        await admin.put_flags("prod", FLAGS)
        await admin.put_flags("staging", FLAGS)
    url = f"{base_url(tenants.server)}/ofrep/v1/evaluate/flags/checkout"
    body = {"context": {"targetingKey": "u"}}
    assert (await post(url, body))[0] == 401
    assert (await post(url, body, headers={"Authorization": "Bearer cmt_nope.nope"}))[0] == 401
    assert (await post(url, body, headers={"X-API-Key": "garbage"}))[0] == 401
    service = tenants.tokens["orders-service"]
    assert (await post(url, body, headers={"Authorization": f"Bearer {service}"}))[0] == 200
    assert (await post(url, body, headers={"X-API-Key": service}))[0] == 200
    # A staging reader reads staging's flags, not prod's.
    reader = {"Authorization": f"Bearer {tenants.tokens['staging-reader']}"}
    status, denied, _ = await post(url, body, headers=reader)
    assert status == 403 and "may not read the flags of prod" in denied["errorDetails"]
    staging = f"{base_url(tenants.server, 'staging')}/ofrep/v1/evaluate/flags"
    assert (await post(staging, body, headers=reader))[0] == 200
    assert (await post(f"{base_url(tenants.server)}/ofrep/v1/evaluate/flags", body, headers=reader))[0] == 403


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_only_ofrep_paths_answer(server: ConfmeshServer, http_session: aiohttp.ClientSession) -> None:
    for path in ("/", "/metrics", "/ofrep/v1/evaluate/flags", "/environments/prod/ofrep/v2/evaluate/flags"):
        async with http_session.post(f"{server.http_url}{path}", json={}) as r:
            assert r.status in (404, 405), path


async def test_if_none_match_star_is_no_match_for_a_post(server: ConfmeshServer, admin: AdminClient) -> None:
    await admin.put_flags("prod", FLAGS)
    url = f"{base_url(server)}/ofrep/v1/evaluate/flags"
    status, body, _ = await post(url, {"context": {"targetingKey": "u"}}, headers={"If-None-Match": "*"})
    assert status == 200 and body["flags"]


async def test_a_flag_too_costly_to_evaluate_is_refused_with_the_limit_named(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    """A flag writer plants targeting whose cost doubles per context item: the evaluation stops at its
    budget and the caller is told so; the server goes on answering."""
    doubling = {"merge": [{"var": "accumulator"}, {"var": "accumulator"}]}
    heavy = {"variants": {"on": True, "off": False}, "default_variant": "off",
             "targeting": {"if": [{"reduce": [{"var": "a"}, doubling, [1]]}, "on", "off"]}}  # fmt: skip
    await admin.put_flags("prod", {**FLAGS, "heavy": heavy})
    context = {"context": {"targetingKey": "u", "a": list(range(60))}}
    for path in ("/ofrep/v1/evaluate/flags/heavy", "/ofrep/v1/evaluate/flags"):
        status, body, _ = await post(f"{base_url(server)}{path}", context)
        assert status == 400 and body["errorCode"] == "GENERAL", body
        assert "refused" in body["errorDetails"] and "the limit" in body["errorDetails"], body
    status, body, _ = await post(f"{base_url(server)}/ofrep/v1/evaluate/flags/checkout", context)
    assert status == 200


async def test_one_caller_is_held_to_its_concurrency_limit(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    await admin.put_flags("prod", FLAGS)
    url = f"{base_url(server)}/ofrep/v1/evaluate/flags"
    assert server.control_work is not None
    limit = server.control_work.limits.per_caller
    answers = await asyncio.gather(*(post(url, {"context": {"targetingKey": f"u{i}"}}) for i in range(40)))
    statuses = [a[0] for a in answers]
    assert statuses.count(200) >= limit and 429 in statuses, statuses
    refused = next(a for a in answers if a[0] == 429)
    assert refused[2]["Retry-After"] == "1" and f"the limit is {limit}" in refused[1]["errorDetails"]
