#!/usr/bin/env bash
# The import-linter contracts in pyproject.toml (the design's "must not" column), checked over
# the package as it installs: core/, server/ and client/ become confmesh, confmesh.server and
# confmesh.client, staged under build/.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf build/layers build/lib
python -m pip install -q --no-deps --no-build-isolation --target build/layers . 2>&1 | grep -v "^WARNING" || true
cd build/layers
PYTHONPATH=. lint-imports ../../pyproject.toml
