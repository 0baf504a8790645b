"""Unleash's client features API response, read into confmesh flags that evaluate as Unleash does.

The file is what an Unleash SDK fetches: ``{"version", "features": [...],
"segments": [...]}`` from ``/api/client/features``, or the delta API's
``{"events": [...]}`` (hydration, feature-updated/removed, segment-updated/removed),
replayed in order. Each toggle becomes one flag:

- a toggle with no variants anywhere is a boolean flag, variants
  ``enabled: true`` / ``disabled: false``: ``isEnabled``;
- a toggle with variants (its own, or its strategies') is an object flag whose
  value is what ``getVariant`` returns: ``{"name", "enabled", "feature_enabled",
  "payload"?}``; ``disabled`` is the disabled variant, ``no-variant`` the
  "enabled but no variant" answer. ``value["feature_enabled"]`` is ``isEnabled``.

Strategies become a JsonLogic ``if`` chain of ``unleash_strategy`` conditions
(segments inlined into their constraints) serving ``enabled``, an
``unleash_variant`` pick, or ``no-variant``; the fall-through serves
``disabled`` (see ``confmesh.flags.unleash_ops``). A switched-off toggle is a
disabled flag whose off variant is ``disabled``.

Dependencies become prerequisites: ``{"feature": P}`` needs P enabled (any of
its enabled variants); ``"variants": [...]`` needs P enabled and serving one of
them (a toggle without variants serves Unleash's ``disabled`` variant name while
enabled); ``"enabled": false`` needs P not enabled. Unleash allows one level:
a dependency on a missing toggle or on one that has dependencies itself never
holds, so such a child is imported switched off.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from confmesh.flags.formats import FlagsDocument, FormatProblem, validate_flag

DISABLED = "disabled"
NO_VARIANT = "no-variant"
ENABLED = "enabled"
DISABLED_VALUE = {"name": "disabled", "enabled": False, "feature_enabled": False}
NO_VARIANT_VALUE = {"name": "disabled", "enabled": False, "feature_enabled": True}


def is_unleash(document: Any) -> bool:
    return isinstance(document, Mapping) and (
        isinstance(document.get("features"), list) or isinstance(document.get("events"), list)
    )


def read_unleash(document: Any, *, source: str = "flags") -> FlagsDocument:
    """Every toggle of an Unleash response as a confmesh flag; problems collected, not raised."""
    doc = FlagsDocument()
    if not isinstance(document, Mapping):
        doc.problems.append(FormatProblem(source, "", "", "an Unleash response is a JSON object"))
        return doc
    features, segments = _state(document, source, doc)
    by_name: dict[str, Mapping[str, Any]] = {}
    for i, feature in enumerate(features):
        if not isinstance(feature, Mapping) or not isinstance(feature.get("name"), str):
            doc.problems.append(
                FormatProblem(source, "", f"features[{i}]", "a feature is an object with a name")
            )
            continue
        if feature["name"] in by_name:
            doc.problems.append(FormatProblem(source, feature["name"], "name", "two features have this name"))
            continue
        by_name[feature["name"]] = feature
    translated = {name: _Toggle(name, f, segments, source, doc) for name, f in by_name.items()}
    for name, toggle in translated.items():
        if name not in doc.broken:
            toggle.emit(translated, doc)
    return doc


def _state(
    document: Mapping[str, Any], source: str, doc: FlagsDocument
) -> tuple[list[Any], dict[Any, list[Any]]]:
    def segment_map(items: Any, where: str) -> dict[Any, list[Any]]:
        out: dict[Any, list[Any]] = {}
        if not isinstance(items, list):
            doc.problems.append(FormatProblem(source, "", where, "segments is a list"))
            return out
        for i, s in enumerate(items):
            if not isinstance(s, Mapping) or "id" not in s or not isinstance(s.get("constraints", []), list):
                doc.problems.append(
                    FormatProblem(source, "", f"{where}[{i}]", "a segment has an id and constraints")
                )
                continue
            out[s["id"]] = list(s.get("constraints") or [])
        return out

    if "events" not in document:
        features = document.get("features")
        return (features if isinstance(features, list) else []), segment_map(
            document.get("segments", []), "segments"
        )
    ordered: dict[Any, Any] = {}
    segments: dict[Any, list[Any]] = {}
    for i, event in enumerate(document["events"]):
        where = f"events[{i}]"
        kind = event.get("type") if isinstance(event, Mapping) else None
        if kind == "hydration":
            ordered = {f.get("name"): f for f in event.get("features", []) if isinstance(f, Mapping)}
            segments = segment_map(event.get("segments", []), f"{where}.segments")
        elif kind == "feature-updated" and isinstance(event.get("feature"), Mapping):
            ordered[event["feature"].get("name")] = event["feature"]
        elif kind == "feature-removed":
            ordered.pop(event.get("featureName"), None)
        elif kind == "segment-updated" and isinstance(event.get("segment"), Mapping):
            segments.update(segment_map([event["segment"]], f"{where}.segment"))
        elif kind == "segment-removed":
            segments.pop(event.get("segmentId"), None)
        else:
            doc.problems.append(FormatProblem(source, "", where, f"unknown delta event {kind!r}"))
    return list(ordered.values()), segments


class _Toggle:
    """One Unleash feature on its way to a flag: variants keyed, strategies translated."""

    def __init__(
        self,
        name: str,
        feature: Mapping[str, Any],
        segments: Mapping[Any, list[Any]],
        source: str,
        doc: FlagsDocument,
    ) -> None:
        self.name, self.feature, self.source, self.doc = name, feature, source, doc
        self.values: dict[str, Any] = {}
        self.keys_by_name: dict[str, list[str]] = {}
        self.dependencies = feature.get("dependencies") or []
        if not isinstance(self.dependencies, list):
            self.problem("dependencies", "dependencies is a list")
            self.dependencies = []
        enabled = feature.get("enabled", False)
        if not isinstance(enabled, bool):
            self.problem("enabled", "enabled is true or false")
        self.enabled = enabled is True
        strategies = feature.get("strategies") or []
        if not isinstance(strategies, list):
            self.problem("strategies", "strategies is a list")
            strategies = []
        own = self.variant_list(feature.get("variants"), "variants")
        self.kind_object = bool(own) or any(isinstance(s, Mapping) and s.get("variants") for s in strategies)
        own_pick = self.pick(own, "variants", name, None) if own else None
        self.branches: list[Any] = []
        self.always = not strategies
        for i, strategy in enumerate(strategies):
            where = f"strategies[{i}]"
            if not isinstance(strategy, Mapping) or not isinstance(strategy.get("name"), str):
                self.problem(where, "a strategy is an object with a name")
                continue
            if strategy.get("disabled") is True:
                continue
            constraints = list(strategy.get("constraints") or [])
            missing = False
            for sid in strategy.get("segments") or []:
                if sid not in segments:
                    missing = True  # Unleash: a strategy on a segment it does not have never activates
                    break
                constraints += copy.deepcopy(segments[sid])
            if missing:
                continue
            condition = {
                "unleash_strategy": {
                    "name": strategy["name"],
                    "parameters": dict(strategy.get("parameters") or {}),
                    "constraints": constraints,
                }
            }
            params = strategy.get("parameters") or {}
            listed = self.variant_list(strategy.get("variants"), f"{where}.variants")
            serve: Any
            if listed:
                serve = self.pick(
                    listed, f"{where}.variants", params.get("groupId") or name, params.get("stickiness")
                )
            elif own_pick is not None:
                serve = own_pick
            else:
                serve = NO_VARIANT if self.kind_object else ENABLED
            self.branches += [condition, serve]
        self.on_serve: Any = (
            own_pick if own_pick is not None else (NO_VARIANT if self.kind_object else ENABLED)
        )

    def problem(self, path: str, message: str) -> None:
        self.doc.problems.append(FormatProblem(self.source, self.name, path, message))
        self.doc.broken.setdefault(self.name, f"{path}: {message}")

    def variant_list(self, raw: Any, where: str) -> list[Mapping[str, Any]]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.problem(where, "variants is a list")
            return []
        kept = []
        for i, v in enumerate(raw):
            if not isinstance(v, Mapping) or not isinstance(v.get("name"), str):
                self.problem(f"{where}[{i}]", "a variant is an object with a name")
                continue
            if type(v.get("weight", 0)) is not int or v.get("weight", 0) < 0:
                self.problem(f"{where}[{i}].weight", "a weight is a non-negative integer")
                continue
            kept.append(v)
        return kept

    def key_for(self, variant: Mapping[str, Any]) -> str:
        value: dict[str, Any] = {"name": variant["name"], "enabled": True, "feature_enabled": True}
        if variant.get("payload") is not None:
            value["payload"] = variant["payload"]
        base = (
            variant["name"]
            if variant["name"] not in (DISABLED, NO_VARIANT, ENABLED)
            else f"variant:{variant['name']}"
        )
        key, n = base, 1
        while key in self.values and self.values[key] != value:
            n += 1
            key = f"{base}#{n}"
        self.values[key] = value
        self.keys_by_name.setdefault(variant["name"], [])
        if key not in self.keys_by_name[variant["name"]]:
            self.keys_by_name[variant["name"]].append(key)
        return key

    def pick(
        self, variants: list[Mapping[str, Any]], where: str, group: Any, stickiness: Any
    ) -> dict[str, Any]:
        listed = []
        for v in variants:
            entry: dict[str, Any] = {"key": self.key_for(v), "name": v["name"], "weight": v.get("weight", 0)}
            if v.get("stickiness"):
                entry["stickiness"] = v["stickiness"]
            if v.get("overrides"):
                entry["overrides"] = v["overrides"]
            listed.append(entry)
        spec: dict[str, Any] = {"variants": listed, "groupId": group, "otherwise": NO_VARIANT}
        if stickiness:
            spec["stickiness"] = stickiness
        return {"unleash_variant": spec}

    # -- the flag ----------------------------------------------------------------------------------

    def enabled_keys(self) -> list[str]:
        """The variants this toggle serves while Unleash calls it enabled."""
        if not self.kind_object:
            return [ENABLED]
        return [NO_VARIANT, *self.values]

    def dependency_keys(self, names: list[str]) -> list[str]:
        """The variants whose Unleash variant name is one of `names` (while enabled)."""
        if not self.kind_object:
            return [ENABLED] if DISABLED in names else []
        keys = [NO_VARIANT] if DISABLED in names else []
        for name in names:
            keys += self.keys_by_name.get(name, [])
        return keys

    def emit(self, toggles: Mapping[str, _Toggle], doc: FlagsDocument) -> None:
        prerequisites: list[dict[str, Any]] = []
        satisfiable = True
        for i, dep in enumerate(self.dependencies):
            where = f"dependencies[{i}]"
            if not isinstance(dep, Mapping) or not isinstance(dep.get("feature"), str):
                self.problem(where, "a dependency names its parent feature")
                return
            parent = toggles.get(dep["feature"])
            if parent is None or parent.dependencies or dep["feature"] in doc.broken:
                satisfiable = False
                continue
            wants = dep.get("variants") or []
            if dep.get("enabled", True) is False:
                prerequisites.append({"flag": dep["feature"], "variants": [DISABLED], "enabled": False})
                continue
            keys = parent.dependency_keys([str(w) for w in wants]) if wants else parent.enabled_keys()
            if not keys:
                satisfiable = False
                continue
            prerequisites.append({"flag": dep["feature"], "variants": keys})
        variants: dict[str, Any]
        if self.kind_object:
            variants = {DISABLED: DISABLED_VALUE, NO_VARIANT: NO_VARIANT_VALUE, **self.values}
        else:
            variants = {ENABLED: True, DISABLED: False}
        if self.always:
            targeting: Any = None
            default = self.on_serve if isinstance(self.on_serve, str) else DISABLED
            if not isinstance(self.on_serve, str):
                targeting = self.on_serve
        else:
            default = DISABLED
            # No strategy activating falls through to the default variant, `disabled` (DEFAULT).
            targeting = {"if": self.branches} if self.branches else None
        description = self.feature.get("description")
        definition: dict[str, Any] = {
            "key": self.name,
            "description": description[:2000] if isinstance(description, str) else "",
            "kind": _KINDS.get(str(self.feature.get("type")), "release"),
            "enabled": self.enabled and satisfiable,
            "variants": variants,
            "default_variant": default,
            "off_variant": DISABLED,
            "prerequisites": prerequisites if satisfiable else [],
            "targeting": targeting,
        }
        validate_flag(definition, self.source, self.name, doc)


_KINDS = {
    "release": "release",
    "experiment": "experiment",
    "operational": "ops",
    "kill-switch": "ops",
    "permission": "permission",
}
