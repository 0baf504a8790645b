"""Shared fixtures: a real etcd for the session, a real confmesh server per test.

Every test gets its own key prefix on the shared etcd, so tests never see
each other's data; ports are picked at run time on 127.0.0.1.

The rule for a test's kind: a test that needs etcd (the ``etcd`` fixture, directly or through
``server``, ``tenants``, ``admin``, ``fleet``..., or an etcd of its own) is marked ``etcd`` here, and
a module that starts servers by other means says ``pytestmark = pytest.mark.etcd``; everything else
is a unit test. ``pytest -m "not etcd"`` is the unit run: no etcd, no server process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from confmesh.client import AdminClient
from confmesh.server import ConfmeshServer, EmbeddedEtcd, ServerSettings, find_etcd_binary

ETCD_FIXTURES = {"etcd", "private_etcd"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if ETCD_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.etcd)


# Shared 2-core machines are noisy: no per-example deadline, no "too slow" failures.
settings.register_profile("confmesh", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("confmesh")


def etcdctl_binary() -> str:
    import shutil

    found = shutil.which("etcdctl")
    if found:
        return found
    return str(Path(find_etcd_binary()).with_name("etcdctl"))


class EtcdHandle:
    def __init__(self, etcd: EmbeddedEtcd) -> None:
        self.etcd = etcd
        self.endpoint = etcd.endpoint

    def ctl(self, *args: str) -> str:
        """etcdctl's output; binary values (the fleet view's compressed summaries) read as
        replacement characters."""
        env = {**os.environ, "ETCDCTL_API": "3"}
        argv = [etcdctl_binary(), f"--endpoints={self.endpoint}", *args]
        out = subprocess.run(argv, capture_output=True, env=env, timeout=30)
        stdout, stderr = (b.decode("utf-8", errors="replace") for b in (out.stdout, out.stderr))
        if out.returncode:
            raise subprocess.CalledProcessError(out.returncode, argv, stdout, stderr)
        return stdout


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdHandle]:
    data = tmp_path_factory.mktemp("etcd") / "data"
    embedded = EmbeddedEtcd(data)
    asyncio.run(embedded.start())
    try:
        yield EtcdHandle(embedded)
    finally:
        asyncio.run(embedded.stop())


@pytest.fixture
def prefix() -> str:
    return f"/test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def server(etcd: EtcdHandle, prefix: str) -> AsyncIterator[ConfmeshServer]:
    srv = ConfmeshServer(
        ServerSettings(
            listen="127.0.0.1:0",
            etcd_endpoints=[etcd.endpoint],
            prefix=prefix,
            heartbeat_interval=1.0,
            http_listen="127.0.0.1:0",
        )
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def admin(server: ConfmeshServer) -> AsyncIterator[AdminClient]:
    async with AdminClient(server.address, actor="tests") as client:
        yield client


# Identities of the multi-tenant tests: name -> grant, each given a bearer token.
TENANT_GRANTS: dict[str, dict[str, object]] = {
    "admin": {"role": "admin"},
    "orders-writer": {"role": "writer", "scopes": ["prod/orders"], "flags": ["prod"]},
    "staging-writer": {"role": "writer", "scopes": ["staging/*"], "flags": ["staging"]},
    "staging-reader": {"role": "reader", "scopes": ["staging/*"]},
    "orders-reader": {"role": "reader", "scopes": ["prod/orders"]},
    "orders-service": {"role": "service", "environment": "prod", "service": "orders"},
    "payments-service": {"role": "service", "environment": "prod", "service": "payments"},
}


class Tenants:
    """A policy-enforcing server, and a bearer token for each of TENANT_GRANTS."""

    def __init__(self, server: ConfmeshServer, tokens: dict[str, str]) -> None:
        self.server = server
        self.address = server.address
        self.tokens = tokens

    def admin(self, who: str) -> AdminClient:
        return AdminClient(self.address, token=self.tokens[who], actor=who)


@pytest.fixture
def policy_text() -> str:
    """The tenants server's policy file (a test module may override this fixture)."""
    return "identities: {}\n"


@pytest.fixture
async def tenants(etcd: EtcdHandle, prefix: str, tmp_path: Path, policy_text: str) -> AsyncIterator[Tenants]:
    from confmesh.server.access import Grant, new_token
    from confmesh.server.records import store_token

    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text)
    srv = ConfmeshServer(
        ServerSettings(listen="127.0.0.1:0", etcd_endpoints=[etcd.endpoint], prefix=prefix,
                       policy_file=str(policy), heartbeat_interval=1.0, http_listen="127.0.0.1:0")
    )  # fmt: skip
    await srv.start()
    try:
        assert srv.etcd is not None
        tokens = {}
        for name, grant in TENANT_GRANTS.items():
            record, token = new_token(name, Grant.model_validate(grant), "tests")
            revision = await store_token(srv.etcd, srv.layout, record, actor="tests", reason="fixture")
            tokens[name] = token
        await srv.source.wait_for_revision(revision, 5)
        yield Tenants(srv, tokens)
    finally:
        await srv.stop()
