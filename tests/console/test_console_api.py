"""The console's HTTP API without a browser: sessions, CSRF, bounds, and the page assets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from confmesh.server import ConfmeshServer, ServerSettings
from confmesh.server.console.api import MAX_BODY, MAX_EVENT_STREAMS_PER_CALLER
from tests.conftest import EtcdHandle, Tenants


async def _login(session: aiohttp.ClientSession, base: str, token: str) -> dict[str, Any]:
    async with session.post(f"{base}/console/api/login", json={"token": token}) as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


def _csrf(session: aiohttp.ClientSession) -> str:
    return next(c.value for c in session.cookie_jar if c.key == "cm_csrf")


async def test_sessions_need_a_valid_token_and_cookies_are_strict(tenants: Tenants) -> None:
    base = tenants.server.http_url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(f"{base}/console/api/me") as resp:
            assert resp.status == 401 and (await resp.json())["error"]["code"] == "no_identity"
        async with session.post(f"{base}/console/api/login", json={"token": "cmt_nope.nope"}) as resp:
            assert resp.status == 401
        async with session.post(f"{base}/console/api/login", data="token=x") as resp:
            assert resp.status == 400  # a cross-site form cannot log a browser in
        async with session.post(f"{base}/console/api/login", json={"token": tenants.tokens["orders-reader"]},
                                headers={"Origin": "http://evil.example"}) as resp:  # fmt: skip
            assert resp.status == 403
        async with session.post(
            f"{base}/console/api/login", json={"token": tenants.tokens["orders-reader"]}
        ) as resp:
            cookie = resp.headers.getall("Set-Cookie")
            assert any("cm_session=" in c and "HttpOnly" in c and "SameSite=Strict" in c for c in cookie)
            assert (await resp.json())["role"] == "reader"
        async with session.get(f"{base}/console/api/me") as resp:
            assert (await resp.json())["identity"] == "token:orders-reader"
        async with session.get(f"{base}/console/api/audit?limit=lots") as resp:
            assert resp.status == 400 and (await resp.json())["error"]["field"] == "limit"
        # The reader may read its scope, not another.
        async with session.get(f"{base}/console/api/config?env=prod&service=payments") as resp:
            assert resp.status == 403
        async with session.post(
            f"{base}/console/api/logout", json={}, headers={"X-CSRF-Token": _csrf(session)}
        ) as resp:
            assert resp.status == 200
        async with session.get(f"{base}/console/api/me") as resp:
            assert resp.status == 401


async def test_a_revoked_token_ends_its_session(tenants: Tenants) -> None:
    base = tenants.server.http_url
    async with tenants.admin("admin") as admin:
        token = await admin.create_token("short-lived", "reader", scopes=["prod/*"])
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        await _login(session, base, token)
        async with tenants.admin("admin") as admin:
            await admin.revoke_token("short-lived")
        await asyncio.sleep(0.2)
        async with session.get(f"{base}/console/api/scopes") as resp:
            assert resp.status == 401


async def test_bodies_and_live_streams_are_bounded(tenants: Tenants) -> None:
    base = tenants.server.http_url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        await _login(session, base, tenants.tokens["admin"])
        headers = {"X-CSRF-Token": _csrf(session), "Content-Type": "application/json"}
        big = b'{"env": "prod", "service": "orders", "set": {"k": "' + b"x" * (MAX_BODY + 10) + b'"}}'
        async with session.post(f"{base}/console/api/config", data=big, headers=headers) as resp:
            assert resp.status == 413
        async with session.post(f"{base}/console/api/config", data=b"[1, 2", headers=headers) as resp:
            assert resp.status == 400 and "not JSON" in (await resp.json())["error"]["message"]
        for deep in (b'{"a": ' * 100 + b"1" + b"}" * 100, b"[" * 100_000 + b"]" * 100_000):
            async with session.post(f"{base}/console/api/flags/explain", data=deep, headers=headers) as resp:
                assert resp.status == 400, await resp.text()
        kill = {"env": "prod", "key": "x", "confirm": True}
        async with session.post(f"{base}/console/api/flags/kill", json=kill, headers=headers) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["field"] == "reason"


async def test_live_streams_are_bounded_per_identity_and_end_when_the_token_goes(
    tenants: Tenants, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One identity holds at most 8 live pages (an admin can still open one); the replica's total is
    bounded too; a revoked token's stream ends at once with a `denied` event."""
    import confmesh.server.console.api as console_api

    monkeypatch.setattr(console_api, "MAX_EVENT_STREAMS", 12)
    base = tenants.server.http_url
    sessions = {who: aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
                for who in ("orders-reader", "admin", "staging-reader")}  # fmt: skip
    streams = []
    try:
        for who, session in sessions.items():
            await _login(session, base, tenants.tokens[who])
        hog = sessions["orders-reader"]
        for _ in range(MAX_EVENT_STREAMS_PER_CALLER):
            streams.append(await hog.get(f"{base}/console/api/events"))
        assert all(r.status == 200 for r in streams)
        assert (await streams[0].content.readline()).startswith(b"event: update")
        async with hog.get(f"{base}/console/api/events") as over:
            assert over.status == 429 and "the limit is 8" in (await over.json())["error"]["message"]
        for _ in range(4):  # the admin still gets its pages, up to the replica's total
            streams.append(await sessions["admin"].get(f"{base}/console/api/events"))
        assert all(r.status == 200 for r in streams)
        async with sessions["staging-reader"].get(f"{base}/console/api/events") as full:
            assert full.status == 503

        async with tenants.admin("admin") as admin:
            await admin.revoke_token("orders-reader")
        for resp in streams[:MAX_EVENT_STREAMS_PER_CALLER]:
            lines = []
            async with asyncio.timeout(5):
                while (line := await resp.content.readline()) and not line.startswith(b"event: denied"):
                    lines.append(line)
            assert line.startswith(b"event: denied")
            assert await resp.content.read() == b"data: {}\n\n"  # and the stream ends there
    finally:
        for resp in streams:
            resp.close()
        for session in sessions.values():
            await session.close()
    await asyncio.sleep(0.3)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        await _login(session, base, tenants.tokens["staging-reader"])
        async with session.get(f"{base}/console/api/events") as again:  # closed streams free their slots
            assert again.status == 200


async def test_the_page_and_assets_ship_with_a_strict_content_security_policy(tenants: Tenants) -> None:
    base = tenants.server.http_url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(f"{base}/console/") as resp:
            assert resp.status == 200 and "app.js" in await resp.text()
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
            assert resp.headers["X-Frame-Options"] == "DENY"
        async with session.get(f"{base}/console/static/app.js") as resp:
            assert resp.status == 200 and resp.content_type == "text/javascript"
        async with session.get(f"{base}/console/static/..%2f..%2fapp.py") as resp:
            assert resp.status == 404


async def test_a_server_with_open_live_pages_stops_at_once(etcd: EtcdHandle, prefix: str) -> None:
    settings = ServerSettings(
        listen="127.0.0.1:0", etcd_endpoints=[etcd.endpoint], prefix=prefix, http_listen="127.0.0.1:0"
    )
    server = ConfmeshServer(settings)
    await server.start()
    async with aiohttp.ClientSession() as session:
        streams = [await session.get(f"{server.http_url}/console/api/events") for _ in range(3)]
        assert all(s.status == 200 for s in streams)
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < 3.0
        for s in streams:
            s.close()


async def test_rollout_and_flag_actions_go_through_the_api_path(tenants: Tenants) -> None:
    base = tenants.server.http_url
    async with tenants.admin("admin") as admin:
        await admin.put("db.pool", 10, env="prod", service="orders")
        await admin.start_rollout("pool", "prod", "orders", set={"db.pool": 20}, percent=10)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        await _login(session, base, tenants.tokens["orders-writer"])
        headers = {"X-CSRF-Token": _csrf(session)}
        target = {"env": "prod", "service": "orders"}
        async with session.post(f"{base}/console/api/rollouts/percent", json={**target, "percent": 50},
                                headers=headers) as resp:  # fmt: skip
            assert resp.status == 200, await resp.text()
        async with session.get(f"{base}/console/api/rollouts") as resp:
            (only,) = (await resp.json())["rollouts"]
            assert only["rollout"]["percent"] == 50 and only["status"]["current_version"] > 0
        async with session.post(f"{base}/console/api/rollouts/promote", json=target, headers=headers) as resp:
            assert resp.status == 200
        async with session.post(f"{base}/console/api/rollouts/abort", json=target, headers=headers) as resp:
            assert resp.status == 404  # promoted: nothing left to abort

        vip = {"id": "vip", "clauses": [{"attribute": "tier", "op": "in", "values": ["vip"]}],
               "serve": {"variant": "on"}}  # fmt: skip
        definition = {"variants": {"on": True, "off": False}, "default_variant": "off", "rules": [vip]}
        explain = {"env": "prod", "key": "vip", "definition": definition, "context": {"tier": "vip"}}
        async with session.post(f"{base}/console/api/flags/explain", json=explain, headers=headers) as resp:
            answer = await resp.json()
            assert answer["value"] is True and answer["variant"] == "on" and answer["trace"]
        # A definition whose cost doubles per context item is refused at its budget, with the limit named.
        doubling = {"merge": [{"var": "accumulator"}, {"var": "accumulator"}]}
        costly = {**definition, "rules": [],
                  "targeting": {"if": [{"reduce": [{"var": "a"}, doubling, [1]]}, "on", "off"]}}  # fmt: skip
        costly_explain = {**explain, "definition": costly, "context": {"a": list(range(60))}}
        async with session.post(
            f"{base}/console/api/flags/explain", json=costly_explain, headers=headers
        ) as resp:
            refused = await resp.json()
            assert resp.status == 400 and refused["error"]["code"] == "budget_exceeded", refused
            assert "the limit" in refused["error"]["message"]
        save = {"env": "prod", "key": "vip", "definition": definition}
        async with session.post(f"{base}/console/api/flags/save", json=save, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        broken = {**save, "definition": {"variants": {}}}
        async with session.post(f"{base}/console/api/flags/save", json=broken, headers=headers) as resp:
            assert resp.status == 400  # validated as PutFlags validates it
    async with tenants.admin("admin") as admin:
        assert (await admin.resolve("prod", "orders", "db.pool")).value == 20
        sources = [r.source for r in (await admin.audit(limit=20)).records]
        assert "UpdateRollout prod/orders pool (50%)" in sources and "PutFlags" in sources


async def test_without_a_policy_the_console_answers_only_on_loopback(server: ConfmeshServer) -> None:
    """Off loopback (the server decides with `is_loopback(--http-listen)`), no policy means no console."""
    assert server.console is not None and server.console.allow_anonymous  # 127.0.0.1: the dev default
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.http_url}/console/api/me") as resp:
            assert resp.status == 200 and (await resp.json())["enforcing"] is False
        server.console.allow_anonymous = False
        async with session.get(f"{server.http_url}/console/api/scopes") as resp:
            assert resp.status == 403 and (await resp.json())["error"]["code"] == "no_policy"


async def test_console_proposals_are_refused_whole_and_bad_times_are_400s(tenants: Tenants) -> None:
    """1,200 changes are refused (never 1,000 stored silently); an apply_at past what a timestamp holds
    is a JSON 400, not a 500 with a traceback."""
    base = tenants.server.http_url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        await _login(session, base, tenants.tokens["orders-writer"])
        headers = {"X-CSRF-Token": _csrf(session)}
        many = [{"layer": "service/prod/orders", "key": f"k{i}", "value": i} for i in range(1200)]
        async with session.post(
            f"{base}/console/api/propose", json={"changes": many}, headers=headers
        ) as resp:
            body = await resp.json()
            assert (
                resp.status == 400
                and "1200 changes in one request; the limit is 1000" in body["error"]["message"]
            )
        one = [{"layer": "service/prod/orders", "key": "k", "value": 1}]
        for at in (1e20, -5, "tomorrow", float("inf")):
            payload = {"changes": one, "apply_at": at}
            async with session.post(f"{base}/console/api/propose", json=payload, headers=headers) as resp:
                body = await resp.json()
                assert resp.status == 400 and body["error"]["field"] == "apply_at", (at, body)
    async with tenants.admin("admin") as admin:
        assert not await admin.changes()


async def test_console_denials_are_audited_once_per_caller(tenants: Tenants) -> None:
    """A reader probing 20 scopes it may not read through the console: 20 refusals, one audit record (the
    servicer's, not again by the console, and throttled per caller, not per path)."""
    base = tenants.server.http_url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        await _login(session, base, tenants.tokens["orders-reader"])
        for i in range(20):
            async with session.get(f"{base}/console/api/config?env=prod&service=probe{i}") as resp:
                assert resp.status == 403
    async with tenants.admin("admin") as admin:
        records = (await admin.audit(actor="token:orders-reader", limit=100)).records
    denied = [r.source for r in records if r.source.startswith("denied:")]
    assert len(denied) == 1, denied


async def test_the_editor_writes_the_layer_it_is_told_and_deletes_keys(tenants: Tenants) -> None:
    base = tenants.server.http_url
    async with tenants.admin("admin") as admin:
        await admin.put("db.host", "db-1", env="prod", service="orders")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        await _login(session, base, tenants.tokens["admin"])
        headers = {"X-CSRF-Token": _csrf(session)}
        edit = {"env": "prod", "service": "orders", "set": {"http.timeout": 5}, "delete": ["db.host"],
                "layer": "service", "mode": "write"}  # fmt: skip
        async with session.post(f"{base}/console/api/config", json=edit, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        to_env = {**edit, "set": {"http.retries": 3}, "delete": [], "layer": "env"}
        async with session.post(f"{base}/console/api/config", json=to_env, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        bad = {**edit, "layer": "flags"}
        async with session.post(f"{base}/console/api/config", json=bad, headers=headers) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["field"] == "layer"
    async with tenants.admin("admin") as admin:
        assert not (await admin.resolve("prod", "orders", "db.host")).found
        assert (await admin.resolve("prod", "payments", "http.retries")).value == 3  # the env layer
        assert not (await admin.resolve("prod", "payments", "http.timeout")).found  # service layer only
