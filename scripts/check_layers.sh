#!/usr/bin/env bash
# The import-linter contracts in pyproject.toml (the design's "must not" column), checked over
# the source tree: core/, server/ and client/ are the roots of the `confmesh` namespace package,
# so putting all three on the path shows grimp every portion.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH=core:server:client lint-imports pyproject.toml
