"""`confmesh apply -f config/`: a directory is the desired state of the layers it names."""

from __future__ import annotations

from pathlib import Path

import pytest

from confmesh.changes import ChangeSpec
from confmesh.client import AdminClient, InvalidArgument
from confmesh.keys import Layer
from confmesh.server import ConfmeshServer
from tests.cli.test_cli import cli
from tests.conftest import Tenants


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


async def test_apply_a_directory_atomically_with_dry_run(
    server: ConfmeshServer, admin: AdminClient, tmp_path: Path
) -> None:
    await admin.put(
        "database", {"pool": 5, "host": "old"}, env="prod", service="orders"
    )  # stored as an object
    await admin.put("legacy.flag", True, env="prod")
    await admin.put("untouched", 1, env="staging")
    config = write(tmp_path / "config", {
        "defaults/base.yaml": "database:\n  pool: 10\n  timeout: 30\n",
        "prod/env.yaml": "replicas: 3\n",
        "prod/orders/db.yaml": "database:\n  pool: 5\n  host: db-orders\n",
        "prod/orders/extra.json": '{"features": {"fast": true}}',
    })  # fmt: skip
    code, out, err = await cli(server.address, "apply", "-f", str(config), "--dry-run")
    assert code == 0, err
    assert "+ defaults:database.pool  10" in out and "- env/prod:legacy.flag  true" in out
    assert "- service/prod/orders:database" in out and "+ service/prod/orders:database.host" in out
    assert "(dry run: nothing applied)" in out
    assert (await admin.get_layer(Layer.env("prod")))[1] == {"legacy.flag": True}

    code, out, err = await cli(server.address, "apply", "-f", str(config), "--reason", "gitops sync")
    assert code == 0, err
    version = int(out.rsplit("applied as version ", 1)[1])
    assert (await admin.get_layer(Layer.env("prod")))[1] == {"replicas": 3}
    assert (await admin.get_layer(Layer.env("staging")))[1] == {"untouched": 1}  # not in the directory
    resolved = await admin.resolve("prod", "orders")
    assert resolved.version == version
    assert resolved.config == {"database": {"pool": 5, "host": "db-orders", "timeout": 30}, "replicas": 3,
                               "features": {"fast": True}}  # fmt: skip
    (record,) = (await admin.audit(limit=1)).records
    assert record.revision == version and record.reason == "gitops sync" and record.source == "Apply"
    code, out, _ = await cli(server.address, "apply", "-f", str(config))
    assert code == 0 and "nothing to apply" in out


async def test_an_invalid_directory_changes_nothing(
    server: ConfmeshServer, admin: AdminClient, tmp_path: Path
) -> None:
    await admin.put("replicas", 2, env="prod")
    before = await admin.resolve("prod", "orders")
    config = write(tmp_path / "config", {
        "prod/env.yaml": "replicas: 9\n",
        "prod/orders/a.yaml": "database:\n  pool: 5\n",
        "prod/orders/b.yaml": "database:\n  pool: 6\n",            # set twice
        "Bad_Env/x.yaml": "a: 1\n",                                  # not an environment name
        "staging/broken.yaml": "a: [1, 2\n",                         # not YAML
    })  # fmt: skip
    code, _, err = await cli(server.address, "apply", "-f", str(config))
    assert code == 1
    assert "nothing was applied" in err and "database.pool is also set in a.yaml" in err
    assert "Bad_Env" in err and "broken.yaml" in err
    after = await admin.resolve("prod", "orders")
    assert (after.version, after.config) == (before.version, before.config)
    # Valid files, but a value the server refuses (a non-finite number is not JSON): still nothing.
    config = write(
        tmp_path / "config2", {"prod/env.yaml": "replicas: 9\n", "prod/orders/a.yaml": "x: .inf\n"}
    )
    code, _, err = await cli(server.address, "apply", "-f", str(config))
    assert code == 1
    assert (await admin.resolve("prod", "orders")).version == before.version


async def test_changes_apply_in_order(admin: AdminClient) -> None:
    layer = Layer.env("prod")
    await admin.put("database", {"pool": 5, "host": "a"}, env="prod")
    # Delete a subtree, then write into it: the subtree is replaced, in one transaction.
    await admin.apply([ChangeSpec(layer, "database", delete=True), ChangeSpec(layer, "database.host", "b")])
    assert (await admin.get_layer(layer))[1] == {"database.host": "b"}
    # The other way round would silently undo the write: refused.
    with pytest.raises(InvalidArgument, match="written and then deleted"):
        await admin.apply(
            [ChangeSpec(layer, "database.host", "c"), ChangeSpec(layer, "database", delete=True)]
        )


async def test_apply_changes_adds_and_removes_leaves_then_changes_nothing(
    server: ConfmeshServer, admin: AdminClient, tmp_path: Path
) -> None:
    await admin.put("feature.x", 1, env="qa")
    await admin.put("feature.old", True, env="qa")
    config = write(tmp_path / "d", {"qa/a.yaml": "feature:\n  x: 2\n  new: on\n"})
    code, out, err = await cli(server.address, "apply", "-f", str(config), "--dry-run")
    assert code == 0, err
    assert "~ env/qa:feature.x  1 -> 2" in out and "+ env/qa:feature.new  true" in out
    assert "- env/qa:feature.old  true" in out
    assert "3 change(s) in 1 layer(s)" in out
    code, out, err = await cli(server.address, "apply", "-f", str(config))
    assert code == 0, err
    assert (await admin.get_layer(Layer.env("qa")))[1] == {"feature.x": 2, "feature.new": True}
    code, out, err = await cli(server.address, "apply", "-f", str(config))
    assert code == 0, err
    assert "0 change(s) in 1 layer(s) from 1 file(s); nothing to apply" in out


async def test_apply_manages_only_layers_with_files_of_their_own(
    server: ConfmeshServer, admin: AdminClient, tmp_path: Path
) -> None:
    await admin.put("keep.me", 1, env="staging")
    await admin.put("keep.too", 1)  # defaults
    await admin.put("stale", 1, env="staging", service="gsvc")
    config = write(tmp_path / "c", {"staging/gsvc/a.yaml": "port: 80\n"})
    code, out, err = await cli(server.address, "apply", "-f", str(config), "--dry-run")
    assert code == 0, err
    assert "manages 1 layer(s): service/staging/gsvc" in out
    code, out, err = await cli(server.address, "apply", "-f", str(config))
    assert code == 0, err
    assert (await admin.get_layer(Layer.env("staging")))[1] == {"keep.me": 1}
    assert (await admin.get_layer(Layer.defaults()))[1] == {"keep.too": 1}
    assert (await admin.get_layer(Layer.svc("staging", "gsvc")))[1] == {"port": 80}
    # A marker file manages a layer with no files: here, emptying it.
    write(config, {"staging/.managed": ""})
    code, out, err = await cli(server.address, "apply", "-f", str(config))
    assert code == 0, err
    assert (await admin.get_layer(Layer.env("staging")))[1] == {}


async def test_a_writer_scoped_to_one_service_applies_its_directory(tenants: Tenants, tmp_path: Path) -> None:
    async with tenants.admin("admin") as admin:
        await admin.put("shared", 1, env="prod")
        await admin.put("db.password", "payments-pw-1", env="prod", service="payments")
    config = write(tmp_path / "o", {"prod/orders/a.yaml": "pool: 7\n"})
    token = tenants.tokens["orders-writer"]
    code, out, err = await cli(tenants.address, "--token", token, "apply", "-f", str(config))
    assert code == 0, err
    # A directory naming another service's layer: refused for writing, and its values never shown.
    other = write(tmp_path / "p", {"prod/payments/a.yaml": "db:\n  password: guess\n"})
    code, out, err = await cli(tenants.address, "--token", token, "apply", "-f", str(other), "--dry-run")
    assert code == 1 and "may not read service/prod/payments" in err
    assert "payments-pw-1" not in out + err
    async with tenants.admin("admin") as admin:
        assert (await admin.get_layer(Layer.svc("prod", "orders")))[1] == {"pool": 7}
        assert (await admin.get_layer(Layer.env("prod")))[1] == {"shared": 1}
