"""Unleash/client-specification, run through ``confmesh flags eval --format unleash``.

All 22 specifications: each ``state`` (the client features API response, or the
delta API's events) is written to a file as an SDK would receive it, and every
``tests`` case (``isEnabled``) and ``variantTests`` case (``getVariant``) is
evaluated offline. A toggle with variants is an object flag whose value is the
``getVariant`` answer (``feature_enabled`` is ``isEnabled``); a toggle without
is a boolean flag, whose ``getVariant`` is Unleash's disabled variant.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.suites import flags_eval, suite

SUITE = "unleash-client-specification"
MISSING = {"name": "disabled", "enabled": False, "feature_enabled": False}


def collect() -> list[Any]:
    try:
        root = suite(SUITE) / "specifications"
    except pytest.skip.Exception as exc:
        return [pytest.param(None, None, None, marks=pytest.mark.skip(reason=str(exc)), id="suite-absent")]
    names = json.loads((root / "index.json").read_text())
    out = []
    for name in names:
        spec = json.loads((root / name).read_text())
        for kind in ("tests", "variantTests"):
            for i, case in enumerate(spec.get(kind, [])):
                out.append(pytest.param(name, kind, case, id=f"{Path(name).stem}:{kind}[{i}]"))
    return out


CASES = collect()


def as_variant(value: Any) -> Any:
    return (
        {"name": "disabled", "enabled": False, "feature_enabled": value} if isinstance(value, bool) else value
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, int], dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("unleash-spec")
    root = suite(SUITE) / "specifications"
    groups: dict[tuple[str, str, str], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for param in CASES:
        name, kind, case = param.values
        if name is not None:
            groups[(name, kind, case["toggleName"])].append((id(case), case))
    out: dict[tuple[str, str, int], dict[str, Any]] = {}
    for (name, kind, toggle), cases in groups.items():
        state = tmp / name
        if not state.exists():
            state.write_text(json.dumps(json.loads((root / name).read_text())["state"]))
        rows = flags_eval(
            state,
            toggle,
            [c["context"] for _, c in cases],
            format="unleash",
            tmp=tmp,
            default=False if kind == "tests" else MISSING,
        )
        for (ident, _), row in zip(cases, rows, strict=True):
            out[(name, kind, ident)] = row
    return out


@pytest.mark.parametrize(("spec", "kind", "case"), CASES)
def test_unleash_specification(
    spec: str, kind: str, case: dict[str, Any], results: dict[tuple[str, str, int], dict[str, Any]]
) -> None:
    row = results[(spec, kind, id(case))]
    value = row["value"]
    if kind == "tests":
        got = value["feature_enabled"] if isinstance(value, dict) else value
    else:
        got = as_variant(value)
    assert got == case["expectedResult"], (case["description"], case["context"], row)
