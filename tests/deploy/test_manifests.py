"""deploy/ cannot rot silently: every manifest parses and its references agree.

Checked: selectors match pod labels; Service target ports and probe ports are
container ports; mounted volumes exist and TLS paths live under their mounts;
--etcd endpoints name the etcd StatefulSet's pods on its client port; the
initial cluster lists every replica; and the `confmesh serve` arguments in
every manifest, the compose file and the Dockerfile parse with the real CLI.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from confmesh.cli import main as cli
from confmesh.server.access import load_policy_file

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").rglob("*.yaml"))


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(items: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in items if d["kind"] == kind]


def serve_args_parse(args: list[str]) -> dict[str, Any]:
    serve = cli.commands["serve"]
    ctx = serve.make_context("serve", list(args))
    return dict(ctx.params)


def container_ports(pod: dict[str, Any]) -> dict[str | int, int]:
    ports: dict[str | int, int] = {}
    for c in pod["spec"]["containers"]:
        for p in c.get("ports", []):
            ports[p["containerPort"]] = p["containerPort"]
            if "name" in p:
                ports[p["name"]] = p["containerPort"]
    return ports


def test_there_are_manifests() -> None:
    assert {p.name for p in MANIFESTS} >= {"etcd.yaml", "confmesh.yaml"}
    assert (DEPLOY / "kubernetes" / "external-etcd" / "confmesh.yaml").exists()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_workloads_services_and_budgets_agree(path: Path) -> None:
    items = docs(path)
    workloads = by_kind(items, "Deployment") + by_kind(items, "StatefulSet")
    assert workloads
    for w in workloads:
        pod = w["spec"]["template"]
        labels = pod["metadata"]["labels"]
        selector = w["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), (
            f"{w['metadata']['name']}: selector does not match its pods"
        )
        ports = container_ports(pod)
        for svc in by_kind(items, "Service"):
            if svc["spec"]["selector"].items() <= labels.items():
                for port in svc["spec"]["ports"]:
                    assert port["targetPort"] in ports, f"Service {svc['metadata']['name']}: {port}"
        for pdb in by_kind(items, "PodDisruptionBudget"):
            if pdb["metadata"]["name"] == w["metadata"]["name"]:
                assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        volumes = {v["name"] for v in pod["spec"].get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for c in pod["spec"]["containers"]:
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in c:
                    spec = c[probe].get("grpc") or c[probe].get("httpGet") or {}
                    assert spec["port"] in ports, f"{probe} port {spec['port']} is not a container port"
            mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
            assert set(mounts) <= volumes, f"mounts {set(mounts) - volumes} have no volume"
            assert "resources" in c and "requests" in c["resources"]


@pytest.mark.parametrize(
    "path", [p for p in MANIFESTS if p.name == "confmesh.yaml"], ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_confmesh_arguments_parse_and_point_at_real_things(path: Path, tmp_path: Path) -> None:
    items = docs(path)
    (deployment,) = by_kind(items, "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    params = serve_args_parse(container["args"])
    ports = container_ports(deployment["spec"]["template"])
    assert int(params["listen"].rpartition(":")[2]) == ports["grpc"]
    assert int(params["metrics_listen"].rpartition(":")[2]) == ports["metrics"]
    assert int(params["http_listen"].rpartition(":")[2]) == ports["https"]  # HTTPS: TLS as --listen's
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    for option in ("server_cert", "server_key", "tls_client_ca", "policy_file"):
        assert any(params[option].startswith(m + "/") for m in mounts), f"{option} is not under a mount"
    # The policy the Deployment mounts is in the same file, and it loads (identities and approval rules).
    (policy_cm,) = [cm for cm in by_kind(items, "ConfigMap") if cm["metadata"]["name"] == "confmesh-policy"]
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v
                  and v["configMap"]["name"] == "confmesh-policy")  # fmt: skip
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume["name"])
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy_cm["data"][params["policy_file"].removeprefix(mount + "/")])
    loaded = load_policy_file(str(policy_file))
    assert loaded.identities and loaded.approvals
    secrets = [
        v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v
    ]
    assert secrets == ["confmesh-tls"]
    if "$(CONFMESH_ETCD)" in params["etcd"]:
        (cm,) = [cm for cm in by_kind(items, "ConfigMap") if cm["metadata"]["name"] == "confmesh-etcd"]
        env = {e["name"]: e for e in container["env"]}
        assert env["CONFMESH_ETCD"]["valueFrom"]["configMapKeyRef"]["name"] == cm["metadata"]["name"]
        endpoints = cm["data"][env["CONFMESH_ETCD"]["valueFrom"]["configMapKeyRef"]["key"]]
        assert serve_args_parse([f"--etcd={endpoints}"])["etcd"] == endpoints
        return
    etcd_items = docs(path.parent / "etcd.yaml")
    (sts,) = by_kind(etcd_items, "StatefulSet")
    (etcd_container,) = sts["spec"]["template"]["spec"]["containers"]
    client_port = container_ports(sts["spec"]["template"])["client"]
    expected = {
        f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}:{client_port}"
        for i in range(sts["spec"]["replicas"])
    }
    assert set(params["etcd"].split(",")) == expected
    cluster = next(a for a in etcd_container["command"] if a.startswith("--initial-cluster="))
    assert len(re.findall(r"etcd-\d+=", cluster)) == sts["spec"]["replicas"]
    assert any(
        s["metadata"]["name"] == sts["spec"]["serviceName"] and s["spec"].get("clusterIP") == "None"
        for s in by_kind(etcd_items, "Service")
    )
    assert any(a.startswith("--auto-compaction-retention=") for a in etcd_container["command"])


def test_compose_and_dockerfile_arguments_parse() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, svc in compose["services"].items():
        if name.startswith("confmesh"):
            params = serve_args_parse(svc["command"])
            assert params["etcd"].split(":")[0] in compose["services"]
            published = {int(p.split(":")[1]) for p in svc["ports"]}
            assert int(params["listen"].rpartition(":")[2]) in published
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd is not None
    params = serve_args_parse(yaml.safe_load(cmd[1]))
    exposed = {int(p) for p in re.search(r"^EXPOSE (.*)$", dockerfile, re.M)[1].split()}  # type: ignore[index]
    assert {
        int(params["listen"].rpartition(":")[2]),
        int(params["metrics_listen"].rpartition(":")[2]),
    } <= exposed
    assert 'ENTRYPOINT ["confmesh", "serve"]' in dockerfile


def test_the_relay_manifest_runs_the_relay_with_arguments_it_takes(tmp_path: Path) -> None:
    items = docs(DEPLOY / "kubernetes" / "relay.yaml")
    (sts,) = by_kind(items, "StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["confmesh", "relay"]
    relay = cli.commands["relay"]
    params = dict(relay.make_context("relay", list(container["args"])).params)
    ports = container_ports(sts["spec"]["template"])
    assert int(params["listen"].rpartition(":")[2]) == ports["grpc"]
    assert int(params["metrics_listen"].rpartition(":")[2]) == ports["metrics"]
    assert int(params["http_listen"].rpartition(":")[2]) == ports["https"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    files = ("upstream_ca", "upstream_cert", "upstream_key", "server_cert", "server_key", "tls_client_ca")
    for option in (*files, "policy_file", "data_dir"):
        assert any(params[option] == m or params[option].startswith(m + "/") for m in mounts), option
    env = {e["name"] for e in container["env"]}
    assert {"CONFMESH_TOKEN", "POD_NAME"} <= env  # the token from a Secret, the relay id from the pod
    (policy_cm,) = [
        cm for cm in by_kind(items, "ConfigMap") if cm["metadata"]["name"] == "confmesh-relay-policy"
    ]
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy_cm["data"]["policy.yaml"])
    assert load_policy_file(str(policy_file)).identities
