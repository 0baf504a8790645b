"""Change requests in the console: the author cannot apply alone; another identity approves; schedules."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest

from confmesh.changes import ChangeSpec
from confmesh.keys import Layer
from tests.conftest import Tenants
from tests.console.conftest import login, shot


@pytest.fixture
def policy_text() -> str:
    rule = '{name: prod, scopes: ["prod", "prod/*"], flags: ["prod"], approvers: 1}'
    return f"identities: {{}}\napprovals:\n  - {rule}\n"


async def _seed(tenants: Tenants) -> None:
    """prod/orders holds db.pool = 10, through an approved change (direct writes are refused)."""
    async with tenants.admin("orders-writer") as author, tenants.admin("admin") as admin:
        change = await author.propose_change([ChangeSpec(Layer.svc("prod", "orders"), "db.pool", 10)])
        await admin.review_change(change.id, approve=True)
        await author.apply_change(change.id)


async def test_a_prod_change_needs_another_identity_to_approve_it(tenants: Tenants, browser: Any) -> None:
    await _seed(tenants)
    base = tenants.server.http_url
    author = await login(browser, base, tenants.tokens["orders-writer"])
    await author.goto(f"{base}/console/#/service/prod/orders")
    await author.get_by_test_id("row-db.pool").locator("input").fill("30")
    await author.get_by_test_id("edit-reason").fill("more connections for the sale")
    await author.get_by_test_id("save").click()  # "Check and propose": lands on the change
    # Proposing computes the change's impact first: on a loaded CI machine that has taken over 5 s.
    await author.get_by_test_id("change-state").filter(has_text="open").wait_for(timeout=15_000)
    change_url = author.url
    assert await author.get_by_test_id("approve").is_disabled()  # nobody reviews their own change
    await author.get_by_test_id("apply").click()
    await author.get_by_test_id("error").filter(has_text="needs 1 approval").wait_for(timeout=15_000)
    assert "service/prod/orders" in await author.get_by_test_id("diff").inner_text()
    assert "prod/orders" in await author.get_by_test_id("blast").inner_text()
    await shot(author, "change-request")

    reviewer = await login(browser, base, tenants.tokens["admin"])
    await reviewer.goto(change_url)
    await reviewer.get_by_test_id("comment").fill("fine for the sale")
    await reviewer.get_by_test_id("approve").click()
    await reviewer.get_by_test_id("change-state").filter(has_text="approved").wait_for(timeout=15_000)

    await author.get_by_test_id("change-state").filter(has_text="approved").wait_for(timeout=15_000)  # live
    await author.get_by_test_id("apply").click()
    await author.get_by_test_id("change-state").filter(has_text="applied").wait_for(timeout=15_000)
    async with tenants.admin("admin") as admin:
        assert (await admin.resolve("prod", "orders", "db.pool")).value == 30
    await author.goto(f"{base}/console/#/changes")
    await author.get_by_test_id("changes").wait_for()
    await shot(author, "changes")


async def test_a_scheduled_change_applies_at_its_time_once(tenants: Tenants, browser: Any) -> None:
    await _seed(tenants)
    base = tenants.server.http_url
    async with tenants.admin("orders-writer") as author_api:
        change = await author_api.propose_change([ChangeSpec(Layer.svc("prod", "orders"), "sale", True)],
                                                 title="sale on at noon")  # fmt: skip
    reviewer = await login(browser, base, tenants.tokens["admin"])
    await reviewer.goto(f"{base}/console/#/change/{change.id}")
    await reviewer.get_by_test_id("approve").click()
    await reviewer.get_by_test_id("change-state").filter(has_text="approved").wait_for(timeout=15_000)
    at = time.time() + 3
    local = datetime.fromtimestamp(at).strftime("%Y-%m-%dT%H:%M:%S")
    await reviewer.get_by_test_id("schedule-at").fill(local)
    await reviewer.get_by_test_id("schedule").click()
    await reviewer.get_by_test_id("change-state").filter(has_text="scheduled").wait_for(timeout=15_000)
    await shot(reviewer, "change-scheduled")
    async with tenants.admin("admin") as admin:
        assert not (await admin.resolve("prod", "orders", "sale")).found  # pending until its time

    await reviewer.get_by_test_id("change-state").filter(has_text="applied").wait_for(timeout=10_000)
    async with tenants.admin("admin") as admin:
        done = await admin.change(change.id)
        assert done.applied_at.ToNanoseconds() / 1e9 >= int(at)
        assert (await admin.resolve("prod", "orders", "sale")).value is True
        records = (await admin.audit(env="prod", service="orders", limit=50)).records
        assert len([r for r in records if r.source.startswith(f"ChangeRequest {change.id}")]) == 1


async def test_a_change_is_rejected_or_withdrawn_from_its_page(tenants: Tenants, browser: Any) -> None:
    await _seed(tenants)
    base = tenants.server.http_url
    async with tenants.admin("orders-writer") as author_api:
        rejected = await author_api.propose_change([ChangeSpec(Layer.svc("prod", "orders"), "db.pool", 99)])
        withdrawn = await author_api.propose_change([ChangeSpec(Layer.svc("prod", "orders"), "db.pool", 11)])
    reviewer = await login(browser, base, tenants.tokens["admin"])
    await reviewer.goto(f"{base}/console/#/change/{rejected.id}")
    await reviewer.get_by_test_id("comment").fill("99 is too many")
    await reviewer.get_by_test_id("reject").click()
    await reviewer.get_by_test_id("change-state").filter(has_text="rejected").wait_for(timeout=15_000)
    assert "99 is too many" in await reviewer.get_by_test_id("error").inner_text()

    author = await login(browser, base, tenants.tokens["orders-writer"])
    await author.goto(f"{base}/console/#/change/{withdrawn.id}")
    await author.get_by_test_id("cancel").click()
    await author.get_by_test_id("change-state").filter(has_text="cancelled").wait_for(timeout=15_000)
    async with tenants.admin("admin") as admin:
        assert (await admin.resolve("prod", "orders", "db.pool")).value == 10
