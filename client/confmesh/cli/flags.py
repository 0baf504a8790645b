"""``confmesh flags``: define, switch, import, evaluate and retire feature flags."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from confmesh.cli.common import admin_client, dumps, reason_option, run, stable_order
from confmesh.errors import ConfmeshError, InvalidArgument
from confmesh.flags import EvaluationDetails, FlagEvaluator
from confmesh.flags.files import flags_from_document, load_flags_file, parse_document
from confmesh.flags.files import load_document as load_flags_document
from confmesh.flags.flagd import FRACTIONAL, export_flagd
from confmesh.flags.formats import FORMATS
from confmesh.flags.model import Flag
from confmesh.textfiles import read_stdin, read_text_or_stdin


def parse_duration(text: str) -> int:
    """Seconds from `90`, `30m`, `12h`, `7d`."""
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not match:
        raise InvalidArgument(f"invalid duration {text!r}: use e.g. 3600, 30m, 12h or 7d")
    return int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def load_document(path: str) -> Any:
    """A flags document from a file, or from stdin for ``-``."""
    return parse_document(read_stdin(), "stdin") if path == "-" else load_flags_document(path)


def details_json(d: EvaluationDetails) -> dict[str, Any]:
    out: dict[str, Any] = {
        "flag": d.flag_key,
        "value": d.value,
        "variant": d.variant,
        "reason": str(d.reason),
    }
    if d.error_code:
        out["error_code"] = str(d.error_code)
        out["error_message"] = d.error_message
    if d.metadata:
        out["metadata"] = dict(d.metadata)
    return out


def parse_context(text: str, where: str) -> dict[str, Any]:
    try:
        ctx = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"{where}: not valid JSON: {exc}") from exc
    if not isinstance(ctx, dict):
        raise InvalidArgument(f"{where}: a context is a JSON object")
    return ctx


@click.group()
def flags() -> None:
    """Feature flags: evaluated locally in every client, scoped per environment."""


def _run(ctx: click.Context, body: Any) -> Any:
    async def go() -> Any:
        async with admin_client(ctx) as admin:
            return await body(admin)

    return run(go())


env_required = click.option("--env", "env", required=True, help="Environment.")


@flags.command("set")
@click.argument("key")
@env_required
@click.option("--file", "file", default=None, help="Flag definition file (JSON/YAML, - for stdin).")
@click.option("--definition", default=None, help="Flag definition as inline JSON.")
@reason_option
@click.pass_context
def set_flag(
    ctx: click.Context, key: str, env: str, file: str | None, definition: str | None, reason: str
) -> None:
    """Create or replace flag KEY from a definition (--file or --definition)."""
    if (file is None) == (definition is None):
        raise InvalidArgument("give exactly one of --file or --definition")
    body = load_document(file) if file else parse_context(definition or "", "--definition")
    if not isinstance(body, dict):
        raise InvalidArgument("a flag definition is a JSON object")
    result = _run(ctx, lambda a: a.put_flags(env, {key: {**body, "key": key}}, reason=reason))
    click.echo(f"ok revision {result.revision}: {', '.join(result.changed)}")


@flags.command("get")
@click.argument("key")
@env_required
@click.pass_context
def get_flag(ctx: click.Context, key: str, env: str) -> None:
    """Print flag KEY's definition (JSON)."""
    _, defs = _run(ctx, lambda a: a.get_flags(env))
    if key not in defs:
        raise ConfmeshError(f"flag {key!r} does not exist in environment {env!r}")
    click.echo(dumps(defs[key], pretty=True))


@flags.command("list")
@env_required
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.pass_context
def list_flags(ctx: click.Context, env: str, as_json: bool) -> None:
    """List the environment's flags."""
    version, defs = _run(ctx, lambda a: a.get_flags(env))
    if as_json:
        click.echo(dumps({"environment": env, "version": version, "flags": defs}))
        return
    if not defs:
        click.echo(f"no flags in {env}")
        return
    rows = [("FLAG", "KIND", "STATE", "VARIANTS", "DEFAULT", "OWNER", "EXPIRES")]
    for key in sorted(defs):
        d = defs[key]
        rows.append(
            (
                key,
                d.get("kind", "release"),
                "on" if d.get("enabled", True) else "OFF",
                ",".join(d.get("variants", {})),
                str(d.get("default_variant")),
                d.get("owner", ""),
                str(d.get("expires") or ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _switch(ctx: click.Context, key: str, enabled: bool, envs: tuple[str, ...], reason: str) -> None:
    result = _run(ctx, lambda a: a.set_flag_enabled(key, enabled, envs=envs, reason=reason))
    state = "on" if enabled else "OFF"
    click.echo(
        f"ok revision {result.revision}: {key} is {state} in "
        + ", ".join(c.split("/")[1] for c in result.changed)
    )


@flags.command()
@click.argument("key")
@env_required
@reason_option
@click.pass_context
def enable(ctx: click.Context, key: str, env: str, reason: str) -> None:
    """Turn flag KEY on in one environment."""
    _switch(ctx, key, True, (env,), reason)


@flags.command()
@click.argument("key")
@env_required
@reason_option
@click.pass_context
def disable(ctx: click.Context, key: str, env: str, reason: str) -> None:
    """Turn flag KEY off in one environment (it serves its off variant)."""
    _switch(ctx, key, False, (env,), reason)


@flags.command()
@click.argument("key")
@click.option("--env", "envs", multiple=True, help="Limit to these environments (default: all).")
@reason_option
@click.pass_context
def kill(ctx: click.Context, key: str, envs: tuple[str, ...], reason: str) -> None:
    """Kill switch: turn flag KEY off in every environment at once (one transaction)."""
    _switch(ctx, key, False, envs, reason or "kill switch")


@flags.command("delete")
@click.argument("key")
@env_required
@reason_option
@click.pass_context
def delete_flag(ctx: click.Context, key: str, env: str, reason: str) -> None:
    """Delete flag KEY from one environment."""
    result = _run(ctx, lambda a: a.delete_flag(env, key, reason=reason))
    click.echo(f"ok revision {result.revision}: deleted {key}")


fractional_option = click.option(
    "--fractional",
    type=click.Choice(FRACTIONAL),
    default="v2",
    show_default=True,
    help="flagd files: the fractional bucketing the file's flagd uses "
    "(v2 hashes the bucketing string; v3, flagd-core >= 2.0, its canonical CBOR).",
)

format_option = click.option(
    "--format",
    "format",
    type=click.Choice(FORMATS),
    default=None,
    help="The file's format (detected when not given).",
)


def _normalized(definition: Any) -> Any:
    try:
        return Flag.model_validate(definition).model_dump(mode="json", exclude_defaults=True)
    except ValueError:
        return definition


def flags_diff(
    current: dict[str, Any], incoming: dict[str, Any], *, replace: bool
) -> tuple[list[str], list[str]]:
    """Lines saying what importing `incoming` over `current` changes, and the keys it changes."""
    lines: list[str] = []
    changed: list[str] = []
    for key in sorted(incoming):
        new = _normalized(incoming[key])
        if key not in current:
            lines.append(f"+ {key}")
            changed.append(key)
            continue
        old = _normalized(current[key])
        fields = sorted(f for f in set(old) | set(new) if old.get(f) != new.get(f))
        if fields:
            lines.append(f"~ {key}: {', '.join(fields)}")
            changed.append(key)
    if replace:
        removed = sorted(set(current) - set(incoming))
        lines += [f"- {key}" for key in removed]
        changed += removed
    return lines, changed


KILL_SOURCE = "SetFlagEnabled(kill)"  # the audit source of a kill switch (AdminService.SetFlagEnabled)


async def killed_flags(admin: Any, env: str, current: dict[str, Any], incoming: dict[str, Any]) -> list[str]:
    """The flags a kill switch turned off on the server that `incoming` would turn on again.

    A flag is killed when its newest audited change in `env` is a kill. A flag that a file defined off
    and a new file turns on is no kill: that import enables it as written.
    """
    from confmesh.wire import layer_from_pb

    candidates = [
        key
        for key, definition in incoming.items()
        if isinstance(current.get(key), dict)
        and current[key].get("enabled", True) is False
        and definition.get("enabled", True)
    ]
    killed = []
    flags_layer = f"flags/{env}"
    for key in sorted(candidates):
        records = (await admin.audit(env=env, key_prefix=key, limit=50)).records
        touching = (
            r
            for r in records
            if any(c.key == key and str(layer_from_pb(c.layer)) == flags_layer for c in r.changes)
        )
        newest = next(touching, None)
        if newest is not None and newest.source == KILL_SOURCE:
            killed.append(key)
    return killed


@flags.command("import")
@click.argument("file")
@env_required
@format_option
@fractional_option
@click.option("--replace", is_flag=True, help="Also delete the environment's flags that are not in FILE.")
@click.option("--dry-run", is_flag=True, help="Show what would change, change nothing.")
@click.option(
    "--override-kill", is_flag=True, help="Turn on flags that are off (killed) on the server and on in FILE."
)
@reason_option
@click.pass_context
def import_flags(
    ctx: click.Context,
    file: str,
    env: str,
    format: str | None,
    fractional: str,
    replace: bool,
    dry_run: bool,
    override_kill: bool,
    reason: str,
) -> None:
    """Import flags from FILE: confmesh's format, classic JSON, flagd or Unleash.

    Prints what changes (+ new, ~ changed fields, - removed with --replace) and
    writes it in one transaction. A file with any problem is refused whole, every
    problem listed, and nothing is written. Imported flags keep their format's
    bucketing, so no user changes variant. A flag a kill switch turned off stays
    off unless --override-kill: re-importing an unchanged file never undoes an
    emergency kill.
    """
    flag_set = flags_from_document(load_document(file), source=file, format=format, fractional=fractional)
    payload = {
        k: f.model_dump(mode="json", exclude_defaults=True) | {"key": k} for k, f in flag_set.flags.items()
    }
    _, current = _run(ctx, lambda a: a.get_flags(env))
    if not override_kill:
        for key in _run(ctx, lambda a: killed_flags(a, env, current, payload)):
            payload[key]["enabled"] = False
            click.echo(f"! {key}: killed on the server: stays off (--override-kill turns it on)", err=True)
    lines, changed = flags_diff(current, payload, replace=replace)
    for line in lines:
        click.echo(line)
    if dry_run or not changed:
        note = " (dry run: nothing applied)" if dry_run else "; nothing to apply"
        click.echo(f"{len(changed)} flag change(s) in {env}{note}")
        return
    if not replace:  # only what changes is written (and audited), as the dry run showed
        payload = {k: v for k, v in payload.items() if k in changed}
    result = _run(
        ctx, lambda a: a.put_flags(env, payload, replace_all=replace, reason=reason or f"import {file}")
    )
    click.echo(f"ok revision {result.revision}: {len(result.changed)} flag change(s) in {env}")


@flags.command("export")
@click.option("--env", "env", default=None, help="Export the server's flags of this environment.")
@click.option("--flags-file", default=None, help="Export the flags of this file instead.")
@click.option(
    "--format",
    "format",
    type=click.Choice(["flagd"]),
    default="flagd",
    show_default=True,
    help="The schema to write.",
)
@click.option("--output", "-o", default=None, help="Write to this file (default: stdout).")
@click.pass_context
def export_flags(
    ctx: click.Context, env: str | None, flags_file: str | None, format: str, output: str | None
) -> None:
    """Write flags in flagd's schema, for flagd-compatible consumers.

    Only flags that translate exactly are written; each one left out is named on
    stderr with why (prerequisites, Unleash strategies, splits, ...).
    """
    if (flags_file is None) == (env is None):
        raise InvalidArgument("give exactly one of --env (from the server) or --flags-file")
    if flags_file is not None:
        flag_set = load_flags_file(flags_file)
    else:
        _, defs = _run(ctx, lambda a: a.get_flags(env))
        flag_set = flags_from_document({"flags": defs}, source=f"environment {env}", format="confmesh")
    document, left_out = export_flagd(flag_set)
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        Path(output).write_text(text)
    for key, why in left_out.items():
        click.echo(f"left out {key}: {why}", err=True)
    exported = len(document["flags"])
    click.echo(f"exported {exported} flag(s), left out {len(left_out)}", err=True)


def _evaluator(
    ctx: click.Context,
    flags_file: str | None,
    env: str | None,
    format: str | None = None,
    fractional: str = "v2",
) -> FlagEvaluator:
    if (flags_file is None) == (env is None):
        raise InvalidArgument("give exactly one of --flags-file (offline) or --env (from the server)")
    if format is not None and flags_file is None:
        raise InvalidArgument("--format describes --flags-file")
    if flags_file is not None:
        return FlagEvaluator.from_file(flags_file, format=format, fractional=fractional)
    version, defs = _run(ctx, lambda a: a.get_flags(env))
    return FlagEvaluator(defs, version=version, environment=env or "")


def _contexts(context: str | None, contexts: str | None) -> list[dict[str, Any]]:
    if context is not None and contexts is not None:
        raise InvalidArgument("give --context or --contexts, not both")
    if contexts is not None:
        lines = read_text_or_stdin(contexts).splitlines()
        return [parse_context(line, f"{contexts}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    return [parse_context(context or "{}", "--context")]


def _typed(
    ev: FlagEvaluator, key: str, ctx: dict[str, Any], getter: str | None = None, default: Any = None
) -> EvaluationDetails:
    if getter is None:
        flag = ev.flag(key)
        getter = (
            {"boolean": "boolean", "string": "string", "number": "float"}.get(flag.type, "object")
            if flag
            else "object"
        )
    if getter == "float":
        return ev.get_float_details(key, default, ctx)
    return ev.details(key, default, ctx, getter)


GETTERS = ("boolean", "string", "integer", "float", "object")


@flags.command("eval")
@click.argument("key")
@click.option(
    "--flags-file",
    default=None,
    help="Evaluate offline from this file (confmesh, classic, flagd or Unleash format).",
)
@format_option
@fractional_option
@click.option("--env", "env", default=None, help="Evaluate the server's flags of this environment.")
@click.option("--context", default=None, help='Evaluation context as JSON, e.g. \'{"targetingKey": "u1"}\'.')
@click.option("--contexts", default=None, help="A JSON-lines file of contexts (- for stdin).")
@click.option(
    "--type",
    "getter",
    type=click.Choice(GETTERS),
    default=None,
    help="Read the flag as this type, as an SDK getter would (default: the flag's own type).",
)
@click.option("--default", "default", default=None, help="The caller's default value, as JSON.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per context.")
@click.pass_context
def eval_flag(
    ctx: click.Context,
    key: str,
    flags_file: str | None,
    format: str | None,
    fractional: str,
    env: str | None,
    context: str | None,
    contexts: str | None,
    getter: str | None,
    default: str | None,
    as_json: bool,
) -> None:
    """Evaluate flag KEY for one or many contexts, locally, as a client would."""
    ev = _evaluator(ctx, flags_file, env, format, fractional)
    try:
        caller_default = None if default is None else json.loads(default)
    except ValueError as exc:
        raise InvalidArgument(f"--default: not valid JSON: {exc}") from exc
    for c in _contexts(context, contexts):
        d = _typed(ev, key, c, getter, caller_default)
        if as_json:
            click.echo(dumps(details_json(d)))
        else:
            err = f"  ({d.error_code}: {d.error_message})" if d.error_code else ""
            value = json.dumps(stable_order(d.value, top=False), ensure_ascii=False)
            click.echo(f"{value}  variant={d.variant}  reason={d.reason}{err}")


@flags.command()
@click.argument("key")
@click.option("--flags-file", default=None, help="Explain offline from this file.")
@click.option("--env", "env", default=None, help="Explain with the server's flags of this environment.")
@click.option("--context", default="{}", help="Evaluation context as JSON.")
@click.option("--json", "as_json", is_flag=True, help="The steps and the result as one JSON object.")
@click.pass_context
def explain(
    ctx: click.Context, key: str, flags_file: str | None, env: str | None, context: str, as_json: bool
) -> None:
    """Say which rule decided flag KEY for a context, and why."""
    ev = _evaluator(ctx, flags_file, env)
    evaluation_context = parse_context(context, "--context")
    lines = ev.explain(key, evaluation_context)
    if not as_json:
        for line in lines:
            click.echo(line)
        return
    result = details_json(_typed(ev, key, evaluation_context))
    steps = [line for line in lines if not line.startswith("=> ")]
    click.echo(dumps({**result, "version": ev.version, "steps": steps}))


@flags.command()
@env_required
@click.option("--window", default="7d", show_default=True, help="Usage window: 3600, 30m, 12h, 7d.")
@click.option(
    "--min-evaluations",
    default=100,
    show_default=True,
    help="Evaluations needed before a single-variant flag counts as stale.",
)
@click.option("--check", is_flag=True, help="Exit 1 when any flag is stale (for CI or a daily job).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.pass_context
def stale(
    ctx: click.Context, env: str, window: str, min_evaluations: int, check: bool, as_json: bool
) -> None:
    """Flags past their expiry, and flags that served one variant to everyone over the window."""
    from confmesh.flags.lifecycle import stale_flags
    from confmesh.flags.model import parse_flag_set

    seconds = parse_duration(window)

    async def body(admin: Any) -> tuple[dict[str, Any], Any]:
        return (await admin.get_flags(env))[1], await admin.flag_usage(env, seconds)

    defs, usage = _run(ctx, body)
    per_flag = {u.flag: dict(u.variants) for u in usage.flags}
    found = stale_flags(
        env, parse_flag_set(defs).flags, per_flag, now=datetime.now(UTC), min_evaluations=min_evaluations
    )
    p95_days = usage.flag_age_p95_seconds / 86400
    if as_json:
        click.echo(
            dumps(
                {
                    "environment": env,
                    "window_seconds": seconds,
                    "flag_age_p95_days": round(p95_days, 2),
                    "stale": [{"flag": s.flag, "reason": s.reason} for s in found],
                }
            )
        )
    else:
        for s in found:
            click.echo(f"{s.flag}: {s.reason}")
        click.echo(f"{len(found)} stale flag(s) of {len(defs)} in {env}; flag age p95 {p95_days:.1f} days")
    if check and found:
        sys.exit(1)
