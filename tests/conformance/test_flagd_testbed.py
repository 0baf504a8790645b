"""open-feature/flagd-testbed, run through ``confmesh flags eval --format flagd``.

In scope: every scenario of the ``evaluator/`` features (against
``evaluator/flags/testkit-flags.json``) and of the evaluation features of
``gherkin/`` (against the testbed's ``flags/`` files, as flagd serves them),
fractional-v2 rows with ``--fractional v2`` and v3 rows (flagd-core >= 2.0's CBOR
bucketing) with ``--fractional v3``. Out of scope, and skipped by tag: the legacy
fractional-v1 bucketing and the deprecated no-default scenarios (superseded by
@no-default-variant); provider behaviour (connection, events, caching, selectors
over the sync stream) is not evaluation and its features are not read.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from gherkin.parser import Parser
from gherkin.pickles.compiler import Compiler

from tests.conformance.suites import ROOT, flags_eval, revision, suite

SUITE = "flagd-testbed"
GHERKIN_FEATURES = ("evaluation", "targeting", "disabled", "metadata")
SKIP_TAGS = {"@fractional-v1", "@deprecated"}
SERVED = "<served>"
GETTERS = {
    "Boolean": "boolean",
    "String": "string",
    "Integer": "integer",
    "Float": "float",
    "Object": "object",
}


@dataclass
class Case:
    name: str
    flags_file: Path
    key: str = ""
    flag_type: str = ""
    default: Any = None
    context: dict[str, Any] = field(default_factory=dict)
    checks: list[tuple[str, Any]] = field(default_factory=list)
    fractional: str = "v2"


def typed(kind: str, text: str) -> Any:
    if kind == "Boolean":
        return text.strip().lower() == "true"
    if kind == "Integer":
        return int(text)
    if kind == "Float":
        return float(text)
    if kind == "Object":
        return json.loads(text)
    return text


Q = r'"((?:[^"\\]|\\.)*)"'
LAST = r'"(.*)"'
STEPS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"an? (\w+)-flag with key " + Q + r" and a (?:default|fallback) value " + Q), "flag"),
    (re.compile(r"a context containing a key " + Q + r', with type "(\w+)" and with value ' + LAST), "key"),
    (re.compile(r"a context containing a targeting key with value " + LAST), "targeting"),
    (
        re.compile(
            r"a context containing a nested property with outer key " + Q + r" and inner key " + Q + r","
            r" with value " + LAST
        ),
        "nested",
    ),
    (re.compile(r"the resolved details value should be " + LAST), "value"),
    (re.compile(r"the reason should be " + LAST), "reason"),
    (re.compile(r"the error-code should be " + LAST), "error"),
    (re.compile(r"the resolved metadata should contain"), "metadata"),
    (re.compile(r"the resolved metadata is empty"), "no-metadata"),
    (re.compile(r'an option "selector" of type "String" with value "rawflags/([^"]*)"'), "selector"),
    (re.compile(r'an option "[^"]*" of type "[^"]*" with value "[^"]*"'), "ignore"),
    (
        re.compile(r"an evaluator|a (?:stable|metadata) flagd provider|the flag was evaluated with details"),
        "ignore",
    ),
]


def to_case(pickle: dict[str, Any], feature: Path, fallback: Path) -> Case:
    case = Case(f"{feature.stem}: {pickle['name']} (line {pickle['location']['line']})", fallback)
    selected: Path | None = None
    for step in pickle["steps"]:
        text = step["text"]
        found = [(m, k) for pattern, k in STEPS if (m := pattern.fullmatch(text))]
        if not found:
            raise AssertionError(f"{feature}: unknown step {text!r}")
        m, kind = found[0]
        g = [x.replace('\\"', '"') for x in m.groups()]
        if kind == "flag":
            case.flag_type, case.key, case.default = g[0], g[1], typed(g[0], g[2])
        elif kind == "key":
            case.context[g[0]] = typed(g[1], g[2])
        elif kind == "targeting":
            case.context["targetingKey"] = g[0]
        elif kind == "nested":
            case.context.setdefault(g[0], {})[g[1]] = g[2]
        elif kind == "value":
            case.checks.append(("value", typed(case.flag_type, g[0])))
        elif kind == "reason":
            case.checks.append(("reason", g[0]))
        elif kind == "error":
            case.checks.append(("error_code", g[0] or None))
        elif kind == "metadata":
            rows = step["argument"]["dataTable"]["rows"][1:]
            want = {
                r["cells"][0]["value"]: typed(r["cells"][1]["value"], r["cells"][2]["value"]) for r in rows
            }
            case.checks.append(("metadata", want))
        elif kind == "no-metadata":
            case.checks.append(("metadata", {}))
        elif kind == "selector":
            selected = feature.parents[1] / "flags" / g[0]
    if selected is not None:
        case.flags_file = selected
    return case


def served(root: Path) -> dict[str, Any]:
    """The testbed's flags/ files as its flagd serves them: one set, evaluators shared."""
    merged: dict[str, Any] = {"flags": {}, "$evaluators": {}}
    for f in sorted((root / "flags").glob("*.json")):
        if not f.name.startswith("selector-"):
            document = json.loads(f.read_text())
            merged["flags"].update(document.get("flags", {}))
            merged["$evaluators"].update(document.get("$evaluators", {}))
    return merged


def collect() -> list[Any]:
    try:
        root = suite(SUITE)
    except pytest.skip.Exception as exc:
        return [pytest.param(None, marks=pytest.mark.skip(reason=str(exc)), id="suite-absent")]
    parser, compiler = Parser(), Compiler()
    sets = [
        (
            sorted((root / "evaluator" / "gherkin").glob("*.feature")),
            root / "evaluator/flags/testkit-flags.json",
        ),
        ([root / "gherkin" / f"{n}.feature" for n in GHERKIN_FEATURES], root / SERVED),
    ]
    out: list[Any] = []
    for features, fallback in sets:
        for feature in features:
            document = parser.parse(feature.read_text())
            document["uri"] = str(feature)
            for pickle in compiler.compile(document):
                tags = {t["name"] for t in pickle["tags"]}
                case = to_case(pickle, feature, fallback)
                if "@fractional-v3" in tags:
                    case.fractional = "v3"
                ident = f"{feature.relative_to(root).with_suffix('')}:{pickle['location']['line']}"
                skip = tags & SKIP_TAGS
                marks = [pytest.mark.skip(reason=f"out of scope: {', '.join(sorted(skip))}")] if skip else []
                out.append(pytest.param(case, marks=marks, id=ident))
    return out


CASES = collect()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every in-scope case evaluated, one ``flags eval`` per (file, flag, type, default)."""
    groups: dict[tuple[Path, str, str, str, str], list[Case]] = defaultdict(list)
    for param in CASES:
        case = param.values[0]
        if case is not None and not param.marks:
            groups[
                (case.flags_file, case.key, case.flag_type, json.dumps(case.default), case.fractional)
            ].append(case)
    tmp = tmp_path_factory.mktemp("flagd-testbed")
    merged = tmp / "served.json"
    merged.write_text(json.dumps(served(suite(SUITE))))
    out: dict[str, dict[str, Any]] = {}
    for (flags_file, key, flag_type, _, fractional), cases in groups.items():
        rows = flags_eval(
            merged if flags_file.name == SERVED else flags_file,
            key,
            [c.context for c in cases],
            format="flagd",
            tmp=tmp,
            getter=GETTERS[flag_type],
            default=cases[0].default,
            extra=["--fractional", fractional],
        )
        out.update({c.name: row for c, row in zip(cases, rows, strict=True)})
    return out


@pytest.mark.parametrize("case", CASES)
def test_flagd_testbed(case: Case | None, results: dict[str, dict[str, Any]]) -> None:
    assert case is not None
    row = results[case.name]
    where = f"{case.name} [{case.flags_file.name}] {case.context}"
    for what, want in case.checks:
        got = row.get(what) if what != "metadata" else row.get("metadata", {})
        if what == "metadata" and want:
            got = {k: got.get(k) for k in want}
        if what == "value" and isinstance(want, float):
            assert isinstance(got, int | float) and got == pytest.approx(want), (where, row)
        else:
            assert got == want, (where, what, row)


def test_suite_revision_is_recorded() -> None:
    root = suite(SUITE)
    assert "flagd-testbed" in revision(root)
    assert ROOT.exists()
