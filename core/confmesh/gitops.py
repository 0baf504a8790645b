"""GitOps: a directory of YAML/JSON files is the desired state of the layers it names.

Layout::

    config/
      defaults/*.yaml              -> the defaults layer
      <env>/*.yaml                 -> environment <env>'s layer
      <env>/<service>/*.yaml       -> service <service> in <env>

Each file is a mapping of nested keys; the files of one directory merge (a
key set twice is an error). A layer is managed when its directory holds
files of its own, or the marker file ``.managed`` (which lets a layer be
emptied): after the apply it holds exactly what its files say. Every other
layer is left alone, so ``prod/`` holding only ``prod/orders/`` manages the
orders service layer and not the environment layer, and a writer scoped to
one service can apply its own directory.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from confmesh.changes import ChangeSpec
from confmesh.errors import InvalidArgument
from confmesh.keys import Layer, check_name, split_key
from confmesh.merge import JSONValue, normalize, same_value
from confmesh.textfiles import decode_text

SUFFIXES = (".yaml", ".yml", ".json")
MARKER = ".managed"
_MISSING = object()


@dataclass
class DesiredState:
    layers: dict[Layer, dict[str, JSONValue]] = field(default_factory=dict)
    files: int = 0


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


MISSING = object()  # a key one side of a `drift` lacks


def drift(
    a: dict[str, JSONValue], b: dict[str, JSONValue], expected: list[str]
) -> list[tuple[str, Any, Any, bool]]:
    """(key, value in a, value in b, expected?) for every leaf that differs."""
    fa, fb = flatten(a), flatten(b)
    rows = []
    for key in sorted(fa.keys() | fb.keys()):
        va, vb = fa.get(key, MISSING), fb.get(key, MISSING)
        if va != vb:
            rows.append((key, va, vb, any(fnmatch.fnmatchcase(key, p) for p in expected)))
    return rows


def _layer_for(root: Path, directory: Path) -> Layer:
    parts = directory.relative_to(root).parts
    if parts == ("defaults",):
        return Layer.defaults()
    if len(parts) == 1:
        return Layer.env(check_name(parts[0], "environment"))
    if len(parts) == 2:
        return Layer.svc(check_name(parts[0], "environment"), check_name(parts[1], "service"))
    raise InvalidArgument(f"{directory}: too deep; layers are defaults/, <env>/ and <env>/<service>/")


def read_directory(root: Path) -> DesiredState:
    """Every managed layer's desired entries; all problems reported together, naming their files."""
    if not root.is_dir():
        raise InvalidArgument(f"{root} is not a directory")
    state, problems = DesiredState(), []
    for directory in sorted(p for p in root.rglob("*") if p.is_dir()):
        files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in SUFFIXES)
        if not files and not (directory / MARKER).is_file():
            continue  # only a folder on the way to its services' layers: not managed
        try:
            layer = _layer_for(root, directory)
        except InvalidArgument as exc:
            problems.append(exc.message)
            continue
        entries: dict[str, JSONValue] = {}
        origin: dict[str, Path] = {}
        for path in files:
            state.files += 1
            try:
                doc = yaml.safe_load(decode_text(path.read_bytes())) or {}
                if not isinstance(doc, dict):
                    raise InvalidArgument("expected a mapping of keys")
                for key, value in flatten(doc).items():
                    split_key(key)
                    if key in entries:
                        raise InvalidArgument(f"{key} is also set in {origin[key].name}")
                    entries[key] = normalize(value, path=key)
                    origin[key] = path
            except (yaml.YAMLError, InvalidArgument, OSError) as exc:
                problems.append(f"{path}: {getattr(exc, 'message', exc)}")
        state.layers[layer] = entries
    if problems:
        raise InvalidArgument("the directory is invalid, nothing was applied:\n  " + "\n  ".join(problems))
    return state


def plan_layer(layer: Layer, live: dict[str, JSONValue], desired: dict[str, JSONValue]) -> list[ChangeSpec]:
    """Deletes then puts that make `live` (keys as stored) hold exactly the `desired` leaves.

    A stored key is kept when the leaves under it already equal the desired
    ones; a stored key that is itself a desired leaf is overwritten in place;
    otherwise it is deleted and the desired leaves under it are written anew.
    """
    kept: set[str] = set()
    deletes = []
    for key, value in live.items():
        leaves = flatten({key: value}) if isinstance(value, dict) and value else {key: value}
        wanted = {p: v for p, v in desired.items() if p == key or p.startswith(key + ".")}
        if wanted.keys() == leaves.keys() and all(same_value(wanted[p], leaves[p]) for p in wanted):
            kept.update(wanted)
        elif key not in desired:
            deletes.append(ChangeSpec(layer, key, delete=True))
    puts = [ChangeSpec(layer, k, v) for k, v in sorted(desired.items()) if k not in kept]
    return sorted(deletes, key=lambda c: c.key) + puts
