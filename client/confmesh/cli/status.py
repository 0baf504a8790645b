"""`confmesh status`: the server's health and the fleet's instances; `--scope`: one scope's versions."""

from __future__ import annotations

from typing import Any

import click

from confmesh.cli.common import admin_command, dumps, json_option
from confmesh.errors import InvalidArgument
from confmesh.wire import message_json


@click.command()
@json_option
@click.option("--local", is_flag=True, help="Only the answering replica's instances, not the whole fleet's.")
@click.option(
    "--scope",
    "scope_name",
    default="",
    metavar="ENV/SERVICE",
    help="One scope: per version, who runs it and why the others rejected it (fleet-wide).",
)
@click.option(
    "--version", "only_version", default=0, type=click.IntRange(0), help="With --scope: one version."
)
@admin_command
async def status(admin: Any, as_json: bool, local: bool, scope_name: str, only_version: int) -> None:
    """Server health and the instance ledger: who runs which version, who rejected what.

    The ledger is fleet-wide: whichever replica answers lists every replica's instances.
    """
    if scope_name:
        await scope_status(admin, scope_name, only_version, as_json)
        return
    if only_version:
        raise InvalidArgument("--version needs --scope")
    resp = await admin.status(local=local)
    if as_json:
        click.echo(dumps(message_json(resp)))
        return
    state = f"STALE ({resp.stale_reason})" if resp.stale else "serving"
    click.echo(
        f"server {resp.server_id} (version {resp.server_version or 'unknown'})  {state}  "
        f"revision {resp.revision}  "
        f"etcd {resp.etcd_endpoints}  prefix {resp.prefix}"
    )
    if len(resp.replicas) > 1:
        click.echo(f"fleet: {len(resp.replicas)} replicas ({', '.join(resp.replicas)})")
    for relay in resp.relays:
        if not relay.connected:
            state = "GONE (its instances leave the view shortly)"
        elif relay.stale_reason:
            state = f"STALE ({relay.stale_reason})"
        else:
            state = "serving"
        click.echo(f"relay {relay.path}: {state}  revision {relay.revision}")
    for v in resp.schema_violations:
        click.echo(
            f"SCHEMA VIOLATION {v.environment}/{v.service}: {v.message} (serving its last valid config)"
        )
    if not resp.instances:
        click.echo("no instances connected")
        return
    relayed = any(inst.relay_path for inst in resp.instances)  # the VIA column only in a mesh
    rows = [("INSTANCE", "SCOPE", "ACKED", "SENT", "STATE", *(["VIA"] if relayed else []), "LAST NACK")]
    for inst in resp.instances:
        nack = ""
        if inst.HasField("last_nack"):
            nack = f"v{inst.last_nack.version}: {inst.last_nack.error}"
        via = [inst.relay_path or "-"] if relayed else []
        state = "connected" if inst.connected else "gone"
        rows.append((inst.instance_id, f"{inst.environment}/{inst.service}", str(inst.acked_version),
                     str(inst.sent_version), state, *via, nack))  # fmt: skip
    columns = len(rows[0]) - 1
    widths = [max(len(r[i]) for r in rows) for i in range(columns)]
    for r in rows:
        click.echo(
            "  ".join(c.ljust(w) for c, w in zip(r[:columns], widths, strict=True)) + "  " + r[columns]
        )
    click.echo("versions (connected instances):")
    for line in version_summary(resp.instances):
        click.echo(f"  {line}")
    unknown: dict[str, tuple[int, str]] = {}
    for inst in resp.instances:
        if inst.scope_notice and inst.connected:
            scope = f"{inst.environment}/{inst.service}"
            unknown[scope] = (unknown.get(scope, (0, ""))[0] + 1, inst.scope_notice)
    if unknown:
        click.echo("UNKNOWN SCOPES (instances running on defaults, most likely a typo in their deployment):")
        for scope, (count, notice) in sorted(unknown.items()):
            click.echo(f"  {scope}: {count} instance(s): {notice}")


async def scope_status(admin: Any, scope_name: str, version: int, as_json: bool) -> None:
    env, _, service = scope_name.partition("/")
    if not env or not service:
        raise InvalidArgument("--scope is ENV/SERVICE, e.g. prod/orders", field="scope")
    resp = await admin.scope_status(env, service, version)
    if as_json:
        click.echo(dumps(message_json(resp)))
        return
    replicas = len(resp.replicas)
    click.echo(
        f"{env}/{service}: {resp.instances} connected instance(s) on {replicas} replica(s); "
        f"base config at version {resp.current_version}"
    )
    if not resp.versions:
        click.echo(f"no instance was sent{f' version {version}' if version else ' any version'}")
    for v in resp.versions:
        click.echo(f"version {v.version}: {v.acked} ACKed, {v.pending} pending, {v.nacked} NACKed")
        for r in v.rejections:
            where = f"at {r.field_path}" if r.field_path else "(no field named)"
            shown = ", ".join(r.example_instances) + (", …" if r.instances > len(r.example_instances) else "")
            click.echo(f"  rejected {where} by {r.instances} instance(s) ({shown}): {r.example_error}")
        if v.rejection_paths_left_out:
            click.echo(f"  (+{v.rejection_paths_left_out} more rejecting field path(s))")
        if v.pending_instances:
            more = ", …" if v.pending > len(v.pending_instances) else ""
            click.echo(f"  pending: {', '.join(v.pending_instances)}{more}")
    if resp.versions_left_out:
        click.echo(f"(+{resp.versions_left_out} older version(s) not shown; --version V shows one)")


def version_summary(instances: Any) -> list[str]:
    """Per scope and version sent: how many instances ACKed it, NACKed it, or have not answered yet."""
    counts: dict[tuple[str, int], list[int]] = {}
    for inst in instances:
        if not inst.connected:
            continue
        row = counts.setdefault((f"{inst.environment}/{inst.service}", inst.sent_version), [0, 0, 0])
        if inst.acked_version == inst.sent_version:
            row[0] += 1
        elif inst.HasField("last_nack") and inst.last_nack.version == inst.sent_version:
            row[1] += 1
        else:
            row[2] += 1
    return [f"{scope}  version {version}: {a} ACKed, {n} NACKed, {p} pending"
            for (scope, version), (a, n, p) in sorted(counts.items())]  # fmt: skip
