"""`confmesh apply`: a change-set file, or a GitOps directory, as one atomic audited change."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from confmesh.cli.common import admin_client, dumps, reason_option, run
from confmesh.errors import InvalidArgument
from confmesh.gitops import DesiredState, plan_layer, read_directory
from confmesh.merge import same_value
from confmesh.textfiles import read_text_or_stdin

PROGRESS_FROM = 10  # layers; fewer apply too fast to need a progress bar


@click.command()
@click.argument("path", required=False)
@click.option(
    "-f", "--file", "file_opt", default=None, help="A change-set file (- for stdin) or a directory."
)
@click.option("--dry-run", is_flag=True, help="Show what would change, change nothing.")
@reason_option
@click.pass_context
def apply(ctx: click.Context, path: str | None, file_opt: str | None, dry_run: bool, reason: str) -> None:
    """Apply a change set (JSON/YAML file) or a config directory, atomically, as one audited change.

    A directory holds defaults/, <env>/ and <env>/<service>/ with YAML or
    JSON files; each layer whose folder has files of its own (or a .managed
    marker file) ends up holding exactly what its files say; other layers
    are untouched. Anything invalid refuses all of it.
    """
    from confmesh.changes import parse_apply_document

    target = file_opt or path
    if target is None:
        raise InvalidArgument("give a file or directory (-f PATH)")
    if target != "-" and Path(target).is_dir():
        state = read_directory(Path(target))  # every file checked before the server is asked anything
        run(_apply_directory(ctx, state, Path(target).name, dry_run, reason))
        return
    text = read_text_or_stdin(target)
    doc = parse_apply_document(text, source=target)

    async def body() -> None:
        async with admin_client(ctx) as admin:
            if dry_run:
                await _preview_changes(admin, doc.changes)
                return
            result = await admin.apply(doc.changes, reason=reason or doc.reason)
        if result.changed:
            click.echo(f"ok revision {result.revision}: {len(result.changed)} key(s) changed")
        else:
            click.echo(f"ok: nothing to change (revision {result.revision})")
        for item in result.changed:
            click.echo(f"  {item}")
        deletes = {f"{change.layer}/{change.key}" for change in doc.changes if change.delete}
        for item in result.unchanged:
            why = "not set: nothing to delete" if item in deletes else "already so"
            click.echo(f"  = {item} ({why})")

    run(body())


async def _preview_changes(admin: Any, changes: list[Any]) -> None:
    """What a change-set file would do, against the layers as they are (nothing written)."""
    live: dict[Any, dict[str, Any]] = {}
    for layer in sorted({c.layer for c in changes}):
        live[layer] = (await admin.get_layer(layer))[1]
    count = 0
    for change in changes:
        entries, where = live[change.layer], f"{change.layer}:{change.key}"
        if change.delete:
            if change.key in entries:
                click.echo(f"- {where}  {dumps(entries.pop(change.key))}")
                count += 1
            else:
                click.echo(f"= {where}  (not set: nothing to delete)")
        elif change.key not in entries:
            click.echo(f"+ {where}  {dumps(change.value)}")
            entries[change.key] = change.value
            count += 1
        elif same_value(entries[change.key], change.value):
            click.echo(f"= {where}  {dumps(change.value)}  (already so)")
        else:
            click.echo(f"~ {where}  {dumps(entries[change.key])} -> {dumps(change.value)}")
            entries[change.key] = change.value
            count += 1
    click.echo(f"{count} change(s) (dry run: nothing applied)")


async def _apply_directory(
    ctx: click.Context, state: DesiredState, name: str, dry_run: bool, reason: str
) -> None:
    async with admin_client(ctx) as admin:
        await _apply_state(admin, state, name, dry_run, reason)


async def _apply_state(admin: Any, state: DesiredState, name: str, dry_run: bool, reason: str) -> None:
    layers = sorted(state.layers)
    click.echo(f"manages {len(layers)} layer(s): " + (", ".join(map(str, layers)) or "none"))
    changes = []
    with click.progressbar(
        layers, label=f"comparing {len(layers)} layers with the server", file=sys.stderr,
        hidden=len(layers) < PROGRESS_FROM,
    ) as bar:  # fmt: skip
        for layer in bar:
            _, live = await admin.get_layer(layer)
            changes += [(c, live.get(c.key)) for c in plan_layer(layer, live, state.layers[layer])]
    for change, old in changes:
        where = f"{change.layer}:{change.key}"
        if change.delete:
            click.echo(f"- {where}  {dumps(old)}")
        elif old is None:
            click.echo(f"+ {where}  {dumps(change.value)}")
        else:
            click.echo(f"~ {where}  {dumps(old)} -> {dumps(change.value)}")
    summary = f"{len(changes)} change(s) in {len(layers)} layer(s) from {state.files} file(s)"
    if dry_run or not changes:
        click.echo(f"{summary}{' (dry run: nothing applied)' if dry_run else '; nothing to apply'}")
        return
    result = await admin.apply([c for c, _ in changes], reason=reason or f"apply {name}/")
    click.echo(f"{summary}: applied as version {result.revision}")
