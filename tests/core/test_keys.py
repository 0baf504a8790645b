import pytest

from confmesh.errors import InvalidArgument
from confmesh.keys import KeyLayout, Layer, LayerKind, Scope, check_name, split_key


@pytest.mark.parametrize("name", ["prod", "eu-west-1", "a", "x" * 63, "0ne"])
def test_valid_names(name: str) -> None:
    assert check_name(name, "environment") == name


@pytest.mark.parametrize("name", ["", "Prod", "-a", "a-", "a_b", "a/b", "x" * 64, "prod ", "é"])
def test_invalid_names_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid environment name"):
        check_name(name, "environment")


@pytest.mark.parametrize("key", ["a", "database.pool.max", "feature_x.on-off", "A.B9"])
def test_valid_keys(key: str) -> None:
    assert ".".join(split_key(key)) == key


@pytest.mark.parametrize("key", ["", ".a", "a.", "a..b", "a b", "a/b", "a." * 20 + "a", "x" * 300])
def test_invalid_keys(key: str) -> None:
    with pytest.raises(InvalidArgument):
        split_key(key)


def test_layout_round_trips_every_layer() -> None:
    layout = KeyLayout("/cm/")
    assert layout.prefix == "/cm"
    for layer in (Layer.defaults(), Layer.env("prod"), Layer.svc("prod", "orders")):
        assert layout.parse(layout.config_key(layer, "db.pool.max")) == (layer, "db.pool.max")
        assert layout.parse(layout.marker_key(layer)) == (layer, None)
    assert layout.config_key(Layer.svc("prod", "orders"), "a.b") == "/cm/config/service/prod/orders/a.b"
    assert layout.parse("/cm/other/thing") is None
    with pytest.raises(InvalidArgument):
        layout.parse("/cm/config/env/prod/too/deep")
    with pytest.raises(InvalidArgument):
        layout.parse("/cm/config/nonsense/a")


def test_layer_of_cli_flags() -> None:
    assert Layer.of(None, None).kind is LayerKind.DEFAULTS
    assert Layer.of("prod", None) == Layer.env("prod")
    assert Layer.of("prod", "orders") == Layer.svc("prod", "orders")
    with pytest.raises(InvalidArgument, match="--service needs --env"):
        Layer.of(None, "orders")
    assert [str(x) for x in Scope("prod", "orders").layers] == ["defaults", "env/prod", "service/prod/orders"]
