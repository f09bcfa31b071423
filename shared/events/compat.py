"""Is a new payload schema safe for consumers of the committed one? (`.v1` may only gain optional fields.)

Rules, applied recursively (through `$ref`): every property of the old schema is still there
with a compatible schema; a property's `required` status does not change; a new property is
optional; anything else (type, format, enum values, patterns, bounds) must stay as it was.
Documentation keys (title, description, examples) may change freely.
"""

from __future__ import annotations

from typing import Any

DOC_KEYS = {"title", "description", "examples", "$id"}


def _resolve(node: Any, root: dict[str, Any]) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        path = node["$ref"].removeprefix("#/").split("/")
        target: Any = root
        for part in path:
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def breaking_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    _compare(old, new, old, new, "data", problems)
    return problems


def _compare(
    old: Any,
    new: Any,
    old_root: dict[str, Any],
    new_root: dict[str, Any],
    where: str,
    problems: list[str],
) -> None:
    old, new = _resolve(old, old_root), _resolve(new, new_root)
    if not (isinstance(old, dict) and isinstance(new, dict)):
        if old != new:
            problems.append(f"{where}: changed from {old!r} to {new!r}")
        return
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    old_req, new_req = set(old.get("required", [])), set(new.get("required", []))
    for name in old_props:
        if name not in new_props:
            problems.append(f"{where}.{name}: removed")
            continue
        if (name in old_req) != (name in new_req):
            state = "required" if name in new_req else "optional"
            problems.append(f"{where}.{name}: became {state}")
        _compare(old_props[name], new_props[name], old_root, new_root, f"{where}.{name}", problems)
    for name in set(new_props) - set(old_props):
        if name in new_req:
            problems.append(
                f"{where}.{name}: added as required (only optional fields may be added)"
            )
    skip = DOC_KEYS | {"properties", "required", "$defs"}
    for key in (set(old) | set(new)) - skip:
        if key in ("items", "additionalProperties") and key in old and key in new:
            _compare(old[key], new[key], old_root, new_root, f"{where}[{key}]", problems)
        elif (
            key in ("anyOf", "oneOf", "allOf")
            and key in old
            and key in new
            and len(old[key]) == len(new[key])
        ):
            for i, (o, n) in enumerate(zip(old[key], new[key], strict=True)):
                _compare(o, n, old_root, new_root, f"{where}.{key}[{i}]", problems)
        elif _strip(old.get(key)) != _strip(new.get(key)):
            problems.append(f"{where}: `{key}` changed from {old.get(key)!r} to {new.get(key)!r}")


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k not in DOC_KEYS}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node
