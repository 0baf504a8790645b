"""Flag overrides for tests: a context manager and a pytest fixture.

Overrides apply to every FlagEvaluator in the process, including the ones a
ConfigClient swaps in on each snapshot::

    from confmesh.flags.testing import override_flags

    with override_flags({"new-checkout": True}):
        ...                                  # every evaluation of new-checkout returns True

    def test_checkout(confmesh_flags):       # pytest fixture (registered by the package)
        confmesh_flags.set("new-checkout", True)
        ...                                  # cleared when the test ends

An overridden evaluation has reason STATIC, variant None and rule "override".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from confmesh.flags.hooks import HOOKS


@contextmanager
def override_flags(values: Mapping[str, Any]) -> Iterator[None]:
    saved = dict(HOOKS.overrides)
    HOOKS.set_overrides({**saved, **values})
    try:
        yield
    finally:
        HOOKS.set_overrides(saved)


class FlagOverrides:
    def set(self, key: str, value: Any) -> None:
        HOOKS.set_overrides({**HOOKS.overrides, key: value})

    def clear(self, key: str | None = None) -> None:
        remaining = {} if key is None else {k: v for k, v in HOOKS.overrides.items() if k != key}
        HOOKS.set_overrides(remaining)


try:
    import pytest
except ImportError:  # pragma: no cover - the fixture needs pytest, the rest does not
    pass
else:

    @pytest.fixture
    def confmesh_flags() -> Iterator[FlagOverrides]:
        saved = dict(HOOKS.overrides)
        try:
            yield FlagOverrides()
        finally:
            HOOKS.set_overrides(saved)
