"""Flags end to end: distribution in snapshots, kill switch, refused writes, usage."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from confmesh import errors
from confmesh.client import AdminClient, ConfigClient, InvalidArgument, NotFound
from confmesh.flags import Reason
from confmesh.server import ConfmeshServer
from tests.conftest import EtcdHandle
from tests.helpers import eventually

CHECKOUT = {
    "variants": {"on": True, "off": False},
    "default_variant": "off",
    "off_variant": "off",
    "rules": [{"id": "premium", "clauses": [{"attribute": "tier", "op": "in", "values": ["premium"]}],
               "serve": {"variant": "on"}},
              {"id": "everyone", "serve": {"variant": "on"}}],
}  # fmt: skip


async def test_kill_turns_a_flag_off_in_fifty_connected_clients(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    await admin.put_flags("prod", {"checkout": CHECKOUT})
    await admin.put_flags("staging", {"checkout": CHECKOUT})
    clients = [
        ConfigClient(server.address, environment="prod" if n % 2 else "staging", service=f"svc-{n % 5}",
                     instance_id=f"i-{n}")
        for n in range(50)
    ]  # fmt: skip
    await asyncio.gather(*(c.start() for c in clients))
    try:
        assert all(c.flags.is_enabled("checkout", {"targetingKey": "u1"}) for c in clients)
        killed = await admin.set_flag_enabled("checkout", False)
        assert sorted(killed.changed) == ["flags/prod/checkout", "flags/staging/checkout"]
        await asyncio.gather(*(c.wait_for_version(killed.revision, timeout=10) for c in clients))
        for c in clients:
            d = c.flags.get_bool_details("checkout", True, {"targetingKey": "u1", "tier": "premium"})
            assert (d.value, d.variant, d.reason) == (False, "off", Reason.DISABLED)
            assert d.flag_version == killed.revision
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_flag_writes_are_validated_as_a_set_and_refused_with_the_reason(admin: AdminClient) -> None:
    await admin.put_flags("prod", {"api": {"variants": {"on": True, "off": False}, "default_variant": "on"}})
    dependent = {
        "variants": {"on": True, "off": False},
        "default_variant": "on",
        "off_variant": "off",
        "prerequisites": [{"flag": "api", "variant": "on"}],
    }
    await admin.put_flags("prod", {"ui": dependent})
    with pytest.raises(InvalidArgument, match="prerequisite flag 'api' does not exist") as info:
        await admin.delete_flag("prod", "api")
    assert info.value.field.startswith("flags")
    bad_split = {
        "variants": {"on": True, "off": False},
        "default_variant": "off",
        "rules": [
            {"serve": {"split": [{"variant": "on", "percent": 60}, {"variant": "off", "percent": 60}]}}
        ],
    }
    with pytest.raises(InvalidArgument, match="sum to 100"):
        await admin.put_flags("prod", {"split": bad_split})
    with pytest.raises(InvalidArgument, match="does not compile"):
        await admin.put_flags(
            "prod",
            {
                "re": {
                    "variants": {"on": True},
                    "default_variant": "on",
                    "rules": [
                        {
                            "clauses": [{"attribute": "a", "op": "regex", "values": ["(unclosed"]}],
                            "serve": {"variant": "on"},
                        }
                    ],
                }
            },
        )
    with pytest.raises(NotFound, match="exists in no environment"):
        await admin.set_flag_enabled("ghost", False)
    version, defs = await admin.get_flags("prod")
    assert set(defs) == {"api", "ui"} and version > 0


async def test_a_malformed_flag_set_written_out_of_band_is_nacked_and_the_last_good_flags_stay(
    server: ConfmeshServer, admin: AdminClient, etcd: EtcdHandle, prefix: str
) -> None:
    good = await admin.put_flags("prod", {"checkout": CHECKOUT})
    async with ConfigClient(
        server.address, environment="prod", service="orders", instance_id="o-1"
    ) as client:
        assert client.flags.is_enabled("checkout", {"targetingKey": "u"})
        broken = {**CHECKOUT, "key": "checkout", "default_variant": "maybe"}
        await asyncio.to_thread(etcd.ctl, "put", f"{prefix}/flags/prod/checkout", json.dumps(broken))
        await eventually(lambda: client.last_rejection is not None)
        assert "unknown variant 'maybe'" in client.last_rejection.error  # type: ignore[union-attr]
        assert client.version == good.revision
        assert client.flags.is_enabled("checkout", {"targetingKey": "u"})
        for _ in range(100):
            (inst,) = [i for i in (await admin.status()).instances if i.instance_id == "o-1"]
            if inst.HasField("last_nack"):
                break
            await asyncio.sleep(0.05)
        assert list(inst.last_nack.field_paths) == ["flags.checkout"]
        assert "default_variant: unknown variant 'maybe'" in inst.last_nack.error


async def test_clients_report_usage_and_single_variant_flags_show_as_stale(
    server: ConfmeshServer, admin: AdminClient
) -> None:
    created = (datetime.now(UTC) - timedelta(days=30)).isoformat()
    expired = {
        "variants": {"on": True, "off": False},
        "default_variant": "on",
        "created": created,
        "expires": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
    }
    await admin.put_flags("prod", {"checkout": {**CHECKOUT, "created": created}, "old": expired})
    async with ConfigClient(
        server.address, environment="prod", service="orders", usage_interval=0.2
    ) as client:
        for n in range(150):
            client.flags.get_bool("checkout", False, {"targetingKey": f"u{n}"})
        client.flags.get_bool("ghost", False)  # errors are not counted as usage

        async def usage() -> dict[str, Any]:
            resp = await admin.flag_usage("prod", 3600)
            return {u.flag: dict(u.variants) for u in resp.flags}

        for _ in range(100):
            if (got := await usage()).get("checkout"):
                break
            await asyncio.sleep(0.05)
        assert got == {"checkout": {"on": 150}}
        series = (await admin.flag_usage("prod", 3600, flag="checkout")).series
        assert 1 <= len(series) <= 2 and sum(b.variants["on"] for b in series) == 150  # a minute or two
        with pytest.raises(errors.InvalidArgument):
            await admin.flag_usage("", 3600, flag="checkout")  # a flag's series needs its environment
        resp = await admin.flag_usage("prod")
        assert 29 * 86400 < resp.flag_age_p95_seconds < 31 * 86400

    from confmesh.flags.lifecycle import stale_flags
    from confmesh.flags.model import parse_flag_set

    _, defs = await admin.get_flags("prod")
    found = stale_flags("prod", parse_flag_set(defs).flags, got, now=datetime.now(UTC))
    assert {s.flag: s.reason.split(" ")[0] for s in found} == {"checkout": "served", "old": "expired"}
