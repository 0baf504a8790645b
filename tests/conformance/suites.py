"""Where the public conformance suites live: read in place, never copied into the repository.

``CONFMESH_CONFORMANCE`` names the directory holding ``flagd-testbed/`` and
``unleash-client-specification/``; by default it is ``../shared/conformance``
beside the checkout. A test whose suite is absent skips and says where it looked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from confmesh.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def suite(name: str) -> Path:
    base = Path(os.environ.get("CONFMESH_CONFORMANCE", ROOT.parent / "shared" / "conformance"))
    path = base / name
    if not path.is_dir():
        pytest.skip(f"conformance suite {name} not found at {path} (set CONFMESH_CONFORMANCE)")
    return path


def revision(path: Path) -> str:
    rev = path / "REVISION"
    return rev.read_text().strip() if rev.exists() else "unknown revision"


def flags_eval(
    flags_file: Path,
    key: str,
    contexts: list[dict[str, Any]],
    *,
    format: str,
    tmp: Path,
    getter: str | None = None,
    default: Any = None,
    extra: list[str] | None = None,
) -> list[dict[str, Any]]:
    """``confmesh flags eval KEY --flags-file F --format X --contexts C --json``, one row per context."""
    lines = tmp / f"contexts-{abs(hash((str(flags_file), key, getter, repr(default), repr(extra))))}.jsonl"
    lines.write_text("".join(json.dumps(c) + "\n" for c in contexts))
    args = ["flags", "eval", key, "--flags-file", str(flags_file), "--format", format]
    args += ["--contexts", str(lines), "--json"]
    if getter is not None:
        args += ["--type", getter]
    if default is not None:
        args += ["--default", json.dumps(default)]
    args += extra or []
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.strip()]
    assert len(rows) == len(contexts), result.output
    return rows
