#!/usr/bin/env bash
# mypy --strict over the source tree as it is: core/, server/ and client/ are the roots of the
# `confmesh` namespace package (mypy_path in pyproject.toml), so no staging install is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m mypy core/confmesh server/confmesh client/confmesh
# The examples are user-facing code: strict too.
python -m mypy examples
