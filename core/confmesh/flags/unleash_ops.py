"""Unleash's strategies, constraints and variants as targeting operators (filled in below)."""

from __future__ import annotations

from collections.abc import Mapping

from confmesh.flags.jsonlogic import Extension

UNLEASH_OPERATORS: Mapping[str, Extension] = {}
