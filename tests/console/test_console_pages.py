"""The console in headless Chromium: log in, kill a flag and watch the fleet, typed edits, readers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel, Field

from confmesh.client import AdminClient, ConfigClient
from tests.conftest import Tenants
from tests.console.conftest import login, shot
from tests.helpers import eventually

FLAG = {"variants": {"on": True, "off": False}, "default_variant": "on", "owner": "team-checkout",
        "kind": "ops", "description": "the new checkout flow"}  # fmt: skip
CLIENTS = 20


class StrictDb(BaseModel):
    pool: int = Field(le=15)
    host: str = ""


class Strict(BaseModel):
    db: StrictDb


async def test_a_kill_in_the_console_reaches_20_clients_on_the_fleet_page_within_2_s(
    tenants: Tenants, browser: Any
) -> None:
    server = tenants.server
    async with tenants.admin("admin") as admin:
        await admin.put("db.pool", 10, env="prod", service="orders")
        await admin.put_flags("prod", {"checkout": FLAG})
    clients = [
        ConfigClient(server.address, environment="prod", service="orders", instance_id=f"orders-{n}",
                     token=tenants.tokens["orders-service"])
        for n in range(CLIENTS)
    ]  # fmt: skip
    for client in clients:
        await client.start()
    try:
        for client in clients:
            await client.wait_for_version(0, timeout=10)
        base = server.http_url
        flags = await login(browser, base, tenants.tokens["admin"])
        await shot(flags, "services")
        fleet = await flags.context.new_page()
        await fleet.goto(f"{base}/console/#/fleet/prod/orders")
        before = int(await fleet.get_by_test_id("current-version").inner_text())
        await (
            fleet.locator(f'[data-testid="version-{before}"] [data-testid="acked"]')
            .filter(has_text=str(CLIENTS))
            .wait_for(timeout=10_000)
        )

        await flags.goto(f"{base}/console/#/flags/prod")
        row = flags.get_by_test_id("flag-checkout")
        await row.get_by_test_id("kill").click()
        await flags.get_by_test_id("reason").fill("checkout errors spiking")
        await shot(flags, "kill-switch")
        confirm = flags.get_by_test_id("confirm")
        await confirm.wait_for()
        assert await confirm.is_enabled()
        started = time.monotonic()
        await confirm.evaluate("button => button.click()")  # the user's click, timed from its dispatch

        # The fleet page updates by itself (server-sent events): a newer version, ACKed by all 20.
        reached = """([before, n]) => {
            const v = document.querySelector('[data-testid="current-version"]');
            if (!v || Number(v.textContent) <= before) return false;
            const row = `[data-testid="version-${v.textContent}"]`;
            const cell = document.querySelector(`${row} [data-testid="acked"]`);
            return cell !== null && cell.textContent === String(n);
        }"""
        await fleet.wait_for_function(reached, arg=[before, CLIENTS], timeout=5_000, polling=20)
        after = int(await fleet.get_by_test_id("current-version").inner_text())
        elapsed = time.monotonic() - started
        assert after > before and elapsed < 2.0, (before, after, elapsed)
        assert {str(c.flags.get_bool_details("checkout", True).reason) for c in clients} == {"DISABLED"}
        await row.get_by_test_id("state").filter(has_text="killed").wait_for(timeout=2_000)
        # The adoption chart drew the new version's curve: a version mark, and an ACKed line that
        # climbed to all 20 (its last point at the top of the chart, as high as the first version's).
        chart = fleet.get_by_test_id("adoption-chart")
        await chart.wait_for()
        assert f"v{after}" in (await chart.text_content() or "")
        legend = await chart.locator("text").all_text_contents()
        assert f"ACKed {CLIENTS}" in legend and "NACKed 0" in legend, legend
        points = (await chart.get_by_test_id("series-acked").get_attribute("points") or "").split()
        assert len(points) >= 4 and points[0].split(",")[1] == points[-1].split(",")[1], points
        await shot(flags, "flags")
        await shot(fleet, "fleet")

        async with tenants.admin("admin") as admin:
            kill = (await admin.audit(env="prod", limit=5)).records[0]
        assert kill.source == "SetFlagEnabled(kill)" and kill.reason == "checkout errors spiking"
        assert kill.actor == "token:admin"
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_an_invalid_edit_shows_its_field_path_and_writes_nothing(
    tenants: Tenants, browser: Any
) -> None:
    async with tenants.admin("admin") as admin:
        await admin.put("db.pool", 10, env="prod", service="orders")
        await admin.put("db.host", "db-1", env="prod", service="orders")
        schema = {"type": "object", "properties": {"db": {"type": "object", "properties": {
            "pool": {"type": "integer", "maximum": 50}, "host": {"type": "string"}}}}}  # fmt: skip
        await admin.put_schema("prod", "orders", schema)
        audit_before = len((await admin.audit(env="prod", service="orders", limit=100)).records)
    page = await login(browser, tenants.server.http_url, tenants.tokens["orders-writer"])
    await page.goto(f"{tenants.server.http_url}/console/#/service/prod/orders")
    pool = page.get_by_test_id("row-db.pool").locator("input")
    await pool.fill("100")
    await page.get_by_test_id("save").click()
    error = page.get_by_test_id("error-db.pool")
    await error.filter(has_text="db.pool").wait_for(timeout=5_000)
    assert "50" in await error.inner_text()
    assert "invalid" in (await pool.get_attribute("class") or "")
    await shot(page, "service-invalid-edit")
    async with tenants.admin("admin") as admin:
        assert (await admin.resolve("prod", "orders", "db.pool")).value == 10
        assert len((await admin.audit(env="prod", service="orders", limit=100)).records) == audit_before

    # "Check only" checks and says that nothing was saved (it names no version).
    await pool.fill("40")
    await page.get_by_test_id("check").click()
    checked = page.get_by_test_id("notice").filter(has_text="Nothing was saved")
    await checked.wait_for(timeout=5_000)
    assert "version" not in await checked.inner_text()
    async with tenants.admin("admin") as admin:
        assert (await admin.resolve("prod", "orders", "db.pool")).value == 10

    # A valid edit goes through, typed (an integer stays an integer).
    await page.get_by_test_id("save").click()
    saved = page.get_by_test_id("notice").filter(has_text="Saved as version")
    await saved.wait_for(timeout=5_000)
    first_save = await saved.inner_text()
    async with tenants.admin("admin") as admin:
        assert (await admin.resolve("prod", "orders", "db.pool")).value == 40

    # A key is deleted from the service layer (the page says so with the new version).
    await page.get_by_test_id("row-db.host").get_by_test_id("delete").click()
    await page.get_by_test_id("save").click()
    await saved.filter(has_not_text=first_save).wait_for(timeout=5_000)
    async with tenants.admin("admin") as admin:
        assert not (await admin.resolve("prod", "orders", "db.host")).found


async def test_a_reader_sees_write_controls_disabled_and_forged_posts_are_refused(
    tenants: Tenants, browser: Any
) -> None:
    async with tenants.admin("admin") as admin:
        await admin.put("db.pool", 10, env="prod", service="orders")
        await admin.put_flags("prod", {"checkout": FLAG})
    base = tenants.server.http_url
    page = await login(browser, base, tenants.tokens["orders-reader"])
    await page.goto(f"{base}/console/#/service/prod/orders")
    await page.get_by_test_id("config").wait_for()
    assert await page.get_by_test_id("save").is_disabled()
    assert await page.get_by_test_id("row-db.pool").locator("input").is_disabled()
    await shot(page, "service-reader")
    await page.goto(f"{base}/console/#/flags/prod")
    assert await page.get_by_test_id("flag-checkout").get_by_test_id("kill").is_disabled()

    body = '{"env": "prod", "service": "orders", "set": {"db.pool": 99}, "mode": "write"}'
    forge = """async ([body, withToken]) => {
        const headers = {"Content-Type": "application/json"};
        const csrf = document.cookie.split("; ").find(c => c.startsWith("cm_csrf="));
        if (withToken) headers["X-CSRF-Token"] = csrf.slice(8);
        const res = await fetch("/console/api/config", {method: "POST", headers, body});
        return [res.status, (await res.json()).error.code];
    }"""
    assert await page.evaluate(forge, [body, False]) == [403, "csrf"]  # no CSRF token: refused as such
    assert await page.evaluate(forge, [body, True]) == [403, "denied"]  # the reader's grant refuses it
    # A page of another origin: its Origin is refused, whatever it sends.
    other = await page.context.request.post(
        f"{base}/console/api/config", data=body,
        headers={"Content-Type": "application/json", "Origin": "http://evil.example"},
    )  # fmt: skip
    assert other.status == 403 and (await other.json())["error"]["code"] == "csrf"
    async with AdminClient(tenants.address, token=tenants.tokens["admin"]) as admin:
        assert (await admin.resolve("prod", "orders", "db.pool")).value == 10
        records = (await admin.audit(limit=50)).records
        denials = [r for r in records if r.source.startswith("denied:") and r.actor == "token:orders-reader"]
        assert denials, "the refused console write is in the audit log"


async def test_every_page_renders_with_live_data(tenants: Tenants, browser: Any) -> None:
    async with tenants.admin("admin") as admin:
        for env, pool in (("staging", 5), ("prod", 10)):
            await admin.put("db.pool", pool, env=env, service="orders")
            await admin.put("db.host", f"db-{env}", env=env, service="orders")
        await admin.put("http.timeout", 2.5, env="prod")
        beta = {"id": "beta", "clauses": [{"attribute": "tier", "op": "in", "values": ["beta"]}],
                "serve": {"variant": "on"}}  # fmt: skip
        rollout = {**FLAG, "default_variant": "off", "rules": [beta]}
        await admin.put_flags("prod", {"checkout": FLAG, "beta-search": rollout})
    client = ConfigClient(tenants.address, environment="prod", service="orders", instance_id="orders-0",
                          token=tenants.tokens["orders-service"], usage_interval=0.2)  # fmt: skip
    strict = ConfigClient(tenants.address, environment="prod", service="orders", instance_id="orders-strict",
                          schema=Strict, token=tenants.tokens["orders-service"])  # fmt: skip
    async with client, strict:
        await client.wait_for_version(0, timeout=10)
        async with tenants.admin("admin") as admin:
            await admin.put("db.pool", 30, env="prod", service="orders")  # orders-strict rejects it
            await admin.start_rollout("smaller-pool", "prod", "orders", set={"db.pool": 8}, percent=10)
            await admin.abort_rollout("prod", "orders", reason="too small for the sale")
            await admin.start_rollout(
                "bigger-pool", "prod", "orders", set={"db.pool": 20}, percent=25, max_nack_rate=1.0
            )
            await admin.set_flag_enabled("checkout", False, envs=["prod"])
        await eventually(lambda: strict.last_rejection is not None, timeout=5)
        # The flag page's chart: the last half hour's minutes (recorded as the server records a client's
        # report, back-dated for the picture), then this client's real evaluations, reported now.
        now = time.time()
        for minute in range(45, 0, -1):
            traffic = 120 + (minute * 37) % 23  # some noise
            share = 0.0 if minute > 35 else 0.1 if minute > 25 else 0.25 if minute > 12 else 0.5  # a rollout
            on = int(traffic * share)
            counts = [("beta-search", "on", on), ("beta-search", "off", traffic - on)]
            tenants.server.usage.record("prod", counts, now - minute * 60)
        for n in range(40):
            context = {"targetingKey": f"u{n}", "tier": "beta" if n % 2 else ""}
            client.flags.get_bool("beta-search", False, context)

        async with tenants.admin("admin") as admin:
            for _ in range(100):
                series = (await admin.flag_usage("prod", 120, flag="beta-search")).series
                if sum(sum(b.variants.values()) for b in series) >= 40:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the client's evaluations were not reported: {series}")
        base = tenants.server.http_url
        page = await login(browser, base, tenants.tokens["admin"])
        pages = {
            "service": ("#/service/prod/orders", "config"),
            "fleet-rejections": ("#/fleet/prod/orders", "versions"),
            "flag-editor": ("#/flag/prod/beta-search", "explain"),
            "rollouts": ("#/rollouts", "rollout-bigger-pool"),
            "audit": ("#/audit?env=prod", "audit"),
            "drift": ("#/drift?a=staging&b=prod&service=orders", "drift"),
        }
        for name, (route, testid) in pages.items():
            await page.goto(f"{base}/console/{route}")
            await page.get_by_test_id(testid).wait_for(timeout=5_000)
            assert await page.get_by_test_id("error").count() == 0, name
            if name == "flag-editor":
                chart = page.get_by_test_id("usage-chart")
                await chart.wait_for(timeout=5_000)
                assert await chart.get_by_test_id("usage-on").count() == 1
                assert await chart.get_by_test_id("usage-off").count() == 1
                await page.get_by_test_id("context").fill('{"targetingKey": "u1", "tier": "beta"}')
                await page.get_by_test_id("explain").filter(has_text="variant on").wait_for(timeout=5_000)
            if name == "rollouts":
                history = await page.get_by_test_id("rollout-history").inner_text()
                assert "bigger-pool" in history and "too small for the sale" in history  # the past one too
            if name == "drift":
                drift = await page.get_by_test_id("drift").inner_text()
                assert "db.pool" in drift and "db.host" in drift and "http.timeout" in drift
            if name == "fleet-rejections":
                await page.get_by_test_id("versions").filter(has_text="db.pool").wait_for(timeout=5_000)
                assert "orders-strict" in await page.get_by_test_id("instances").inner_text()
            if name == "audit":
                audit = await page.get_by_test_id("audit").inner_text()
                assert (
                    "PutFlags" in audit
                    and "token:admin" in audit
                    and "+ service/prod/orders:db.pool 10" in audit
                )
                # A flag change shows the fields it changed, not the whole definition twice.
                kill = [t for t in await page.get_by_test_id("audit-change").all_inner_texts()
                        if "flags/prod:checkout" in t and "enabled" in t]  # fmt: skip
                assert kill and "enabled: (unset) → false" in kill[0] and "variants" not in kill[0], kill
            await shot(page, name)


async def test_a_rollout_is_widened_and_promoted_from_its_page(tenants: Tenants, browser: Any) -> None:
    async with tenants.admin("admin") as admin:
        await admin.put("db.pool", 10, env="prod", service="orders")
        await admin.start_rollout("pool", "prod", "orders", set={"db.pool": 20}, percent=10)
    base = tenants.server.http_url
    page = await login(browser, base, tenants.tokens["orders-writer"])
    await page.goto(f"{base}/console/#/rollouts")
    section = page.get_by_test_id("rollout-pool")
    await section.get_by_test_id("percent").fill("50")
    await section.get_by_test_id("set-percent").click()
    await section.locator("h2").filter(has_text="at 50%").wait_for(timeout=5_000)
    await section.get_by_test_id("promote").click()
    await page.get_by_text("No rollouts.").wait_for(timeout=5_000)
    async with tenants.admin("admin") as admin:
        assert (await admin.resolve("prod", "orders", "db.pool")).value == 20
        assert await admin.rollouts() == []
