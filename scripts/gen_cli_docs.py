"""Write docs/cli.md from the CLI's own help texts, so the reference never drifts.

python scripts/gen_cli_docs.py          # regenerate
python scripts/gen_cli_docs.py --check  # exit 1 if docs/cli.md is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click

from confmesh.cli import main as cli

OUT = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def sections(command: click.Command, path: list[str], parent: click.Context | None) -> list[str]:
    ctx = click.Context(command, info_name=path[-1], parent=parent, terminal_width=100, max_content_width=100)
    out = [f"{'#' * min(len(path) + 1, 4)} `{' '.join(path)}`\n", "```text", command.get_help(ctx), "```\n"]
    if isinstance(command, click.Group):
        for name in sorted(command.list_commands(ctx)):
            sub = command.get_command(ctx, name)
            if sub is not None:
                out += sections(sub, [*path, name], ctx)
    return out


def render() -> str:
    header = [
        "# CLI reference\n",
        "Generated from the CLI by `python scripts/gen_cli_docs.py`; do not edit.\n",
    ]
    return "\n".join(header + sections(cli, ["confmesh"], None))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print("docs/cli.md is stale: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        print("docs/cli.md is current")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
