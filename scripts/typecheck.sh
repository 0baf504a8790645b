#!/usr/bin/env bash
# mypy --strict over the package as it installs (core/, server/ and client/
# become confmesh, confmesh.server and confmesh.client), staged under build/.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf build/typecheck build/lib  # build/lib: setuptools would copy stale modules from it
python -m pip install -q --no-deps --no-build-isolation --target build/typecheck . 2>&1 | grep -v "^WARNING" || true
cd build/typecheck
MYPYPATH=. python -m mypy --config-file ../../pyproject.toml -p confmesh
# The examples are user-facing code: strict too, against the installed package.
MYPYPATH=. python -m mypy --config-file ../../pyproject.toml ../../examples
