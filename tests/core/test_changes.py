import pytest

from confmesh.changes import parse_apply_document
from confmesh.errors import InvalidArgument
from confmesh.keys import Layer

GOOD = """
reason: sale
changes:
  - {key: database.pool.max, value: 20}
  - {key: database.pool.max, env: prod, value: 50}
  - {key: database.host, env: prod, service: orders, value: db-orders}
  - {key: legacy, env: prod, delete: true}
"""


def test_an_apply_file_names_every_layer() -> None:
    doc = parse_apply_document(GOOD)
    assert doc.reason == "sale"
    assert [(c.layer, c.key, c.value, c.delete) for c in doc.changes] == [
        (Layer.defaults(), "database.pool.max", 20, False),
        (Layer.env("prod"), "database.pool.max", 50, False),
        (Layer.svc("prod", "orders"), "database.host", "db-orders", False),
        (Layer.env("prod"), "legacy", None, True),
    ]


def test_json_is_accepted_too() -> None:
    doc = parse_apply_document('{"changes": [{"key": "a", "value": {"b": 1}}]}')
    assert doc.changes[0].value == {"b": 1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("changes: [", "not valid YAML"),
        ("- a", "expected a mapping"),
        ("changes: []", "non-empty list"),
        ("changes: [{key: a}]", "exactly one of 'value' or 'delete"),
        ("changes: [{key: a, value: 1, delete: true}]", "exactly one"),
        ("changes: [{key: 'a b', value: 1}]", r"changes\[0\]: invalid key"),
        ("changes: [{key: a, value: 1, env: PROD}]", "invalid environment name"),
        ("changes: [{key: a, value: 1, service: x}]", "--service needs --env"),
        ("changes: [{key: a, value: 1, colour: red}]", "unknown field"),
        ("changes: [{key: a, value: 1}]\nextra: 1", "unknown top-level"),
    ],
)
def test_bad_apply_files_are_refused_with_their_place(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_apply_document(text)
