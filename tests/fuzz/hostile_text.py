"""Control characters in the fuzzer's free text, where a client can put them.

Schemathesis draws string characters from all of Unicode, so NUL (U+0000) turns up in about
one case in a hundred and a lone surrogate never (they have no UTF-8). PostgreSQL refuses NUL
in text and jsonb, and asyncpg cannot encode a lone surrogate: NUL defects were 500s that only
review found. These hooks give two generated cases in three, per part (body, query,
headers), one hostile character in one of its free-text places:

- a string whose schema allows any text (no `enum`, `const`, `format` or `pattern`), or
- a key of an object whose property names are free (`additionalProperties`, e.g.
  `custom_attributes`),

inserted at or written over a drawn position, so the rest of the case stays as valid as
schemathesis made it and the request gets past the other fields. What each part can carry:

- a JSON body: anything, lone surrogates too as `\\ud800` escapes (JSON allows them; the
  client serialises with `ensure_ascii`, the service's `json.loads` gives them back);
- a query string: any character with UTF-8 (`%00`); a surrogate has none;
- a header value: only what RFC 9110 lets a field value hold (an inner HTAB, obs-text
  0x80-0xFF, read as Latin-1); the HTTP server refuses the rest before the service sees it.

Hypothesis shrinks to the untouched case first, so a failure the character does not cause
is reported without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

# NUL is the one PostgreSQL cannot store at all.
_NUL = "\x00"
_OTHER_C0 = "\x01\x08\x0b\x0c\x1b\x1f"
_LINE_BREAKS = "\t\n\r"
_DEL_AND_C1 = "\x7f\x80\x85\x9f"
# Invisible or direction-changing format characters, separators, non-characters and the
# replacement character (what a server makes of invalid UTF-8).
_UNICODE_ODDITIES = "\u200b\u2028\u202e\ufeff\ufffd\ufffe\uffff"
_LONE_SURROGATES = "\ud800\udbff\udc00\udfff"
_OBS_TEXT = "\x80\x85\x9f\xa0\xff"

_URL_SAFE = _OTHER_C0 + _LINE_BREAKS + _DEL_AND_C1 + _UNICODE_ODDITIES
# Repeats weigh the draw: NUL in about a third, a lone surrogate in a quarter (JSON only).
JSON_CHARACTERS = (_NUL * 16) + _URL_SAFE + (_LONE_SURROGATES * 3)
QUERY_CHARACTERS = (_NUL * 10) + _URL_SAFE
# `_header_value` keeps these inside the value, where HTTP does not trim them.
HEADER_CHARACTERS = "\t" + _OBS_TEXT

#: One in UNCHANGED_ONE_IN generated values of a part (body, query, headers) stays as
#: schemathesis made it; the others get a hostile character. The examples and coverage phases
#: (about half of the cases per operation) never go through these hooks.
UNCHANGED_ONE_IN = 3

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Slot:
    """A place for a hostile character: the string at `path`, or the key `path[-1]`."""

    path: Path
    is_key: bool = False


def text_slots(
    value: Any, schema: Any, components: Mapping[str, Any], path: Path = ()
) -> list[Slot]:
    """The free-text places of `value` under its JSON Schema (OpenAPI 3.1 as FastAPI writes it)."""
    return list(dict.fromkeys(_slots(value, schema, components, path)))


def _slots(value: Any, schema: Any, components: Mapping[str, Any], path: Path) -> Iterator[Slot]:
    if schema is True or schema is None:
        schema = {}
    if not isinstance(schema, Mapping):
        return
    if "$ref" in schema:
        name = str(schema["$ref"]).removeprefix("#/components/schemas/")
        yield from _slots(value, components.get(name), components, path)
        return
    for keyword in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(keyword, ()):
            yield from _slots(value, branch, components, path)
    if not _admits_type(schema, value):
        return
    if isinstance(value, str):
        if not {"enum", "const", "format", "pattern"} & set(schema):
            yield Slot(path)
    elif isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", not properties)
        free_keys = extra is not False and not schema.get("propertyNames")
        for key, item in value.items():
            if key in properties:
                yield from _slots(item, properties[key], components, (*path, key))
            elif extra is not False:
                if free_keys and isinstance(key, str):
                    yield Slot((*path, key), is_key=True)
                yield from _slots(item, extra, components, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _slots(item, schema.get("items", {}), components, (*path, index))


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "object": (dict,),
    "array": (list,),
}


def _admits_type(schema: Mapping[str, Any], value: Any) -> bool:
    if any(keyword in schema for keyword in ("anyOf", "oneOf", "$ref")) and "type" not in schema:
        return False  # the branches above decide
    declared = schema.get("type")
    if declared is None:
        return "enum" not in schema and "const" not in schema
    kinds = declared if isinstance(declared, list) else [declared]
    return any(isinstance(value, _JSON_TYPES.get(kind, ())) for kind in kinds)


def with_character(value: Any, slot: Slot, character: str, position: int, overwrite: bool) -> Any:
    """A copy of `value` with `character` put into the string or key at `slot`."""
    if not slot.path:
        return _put(value, character, position, overwrite)
    head, *rest = slot.path
    if isinstance(value, dict):
        if not rest and slot.is_key:
            key = _put(str(head), character, position, overwrite)
            if key in value and key != head:
                return value  # the changed key would overwrite a sibling
            return {(key if name == head else name): item for name, item in value.items()}
        copied = dict(value)
        copied[head] = with_character(
            value[head], Slot(tuple(rest), slot.is_key), character, position, overwrite
        )
        return copied
    if isinstance(value, list) and isinstance(head, int):
        copied_list = list(value)
        copied_list[head] = with_character(
            value[head], Slot(tuple(rest), slot.is_key), character, position, overwrite
        )
        return copied_list
    return value


def _put(text: str, character: str, position: int, overwrite: bool) -> str:
    index = position % (len(text) + 1)
    if overwrite and index < len(text):
        return text[:index] + character + text[index + 1 :]
    return text[:index] + character + text[index:]


def _header_value(text: str, character: str, position: int, overwrite: bool) -> str:
    changed = _put(text, character, position, overwrite)
    # HTTP trims SP and HTAB around a field value, and requests refuses one that opens with
    # whitespace (Unicode's, so U+0085 and U+00A0 too): keep the character inside.
    if changed[:1].isspace() or changed[-1:] in (" ", "\t"):
        return f"x{changed}x"
    return changed


def hostile_variants(
    value: Any, slots: list[Slot], characters: str, *, header: bool = False
) -> st.SearchStrategy[Any]:
    """`value` with one hostile character, or unchanged in one draw in UNCHANGED_ONE_IN."""
    if not slots:
        return st.just(value)

    # One field first, then a place in it: a deep `custom_attributes` must not crowd out `name`.
    fields: dict[str | int | None, list[Slot]] = {}
    for slot in slots:
        fields.setdefault(slot.path[0] if slot.path else None, []).append(slot)
    groups = list(fields.values())

    @st.composite
    def changed(draw: st.DrawFn) -> Any:
        slot = draw(st.sampled_from(draw(st.sampled_from(groups))))
        character = draw(st.sampled_from(characters))
        position = draw(st.integers(min_value=0, max_value=10_000))
        overwrite = draw(st.booleans())
        if header:
            name = slot.path[0]
            return {**value, name: _header_value(str(value[name]), character, position, overwrite)}
        return with_character(value, slot, character, position, overwrite)

    # Hypothesis shrinks towards 0: the case as schemathesis made it.
    return st.integers(min_value=0, max_value=UNCHANGED_ONE_IN - 1).flatmap(
        lambda draw: changed() if draw else st.just(value)
    )


def install(schema: Any, document: Mapping[str, Any]) -> None:
    """Register the hooks on one schemathesis schema built from the OpenAPI `document`."""
    components = document.get("components", {}).get("schemas", {})

    def operation_of(ctx: Any) -> Mapping[str, Any]:
        operation = ctx.operation
        item: Mapping[str, Mapping[str, Any]] = document["paths"].get(operation.path, {})
        return item.get(operation.method.lower(), {})

    def parameter_schemas(ctx: Any, location: str) -> dict[str, Any]:
        return {
            parameter["name"]: parameter.get("schema", {})
            for parameter in operation_of(ctx).get("parameters", ())
            if parameter.get("in") == location
        }

    def parameter_slots(values: Any, schemas: Mapping[str, Any]) -> list[Slot]:
        if not isinstance(values, dict):
            return []
        return [
            slot
            for name, item in values.items()
            if name in schemas
            for slot in text_slots(item, schemas[name], components, (name,))
            if len(slot.path) == 1  # a parameter's own string, not a part of an exploded one
        ]

    def flatmap_body(ctx: Any, body: Any) -> st.SearchStrategy[Any]:
        content = operation_of(ctx).get("requestBody", {}).get("content", {})
        slots = [
            slot
            for media in content.values()
            for slot in text_slots(body, media.get("schema", {}), components)
        ]
        json_body = any("json" in media_type for media_type in content)
        characters = JSON_CHARACTERS if json_body else QUERY_CHARACTERS
        return hostile_variants(body, list(dict.fromkeys(slots)), characters)

    def flatmap_query(ctx: Any, query: Any) -> st.SearchStrategy[Any]:
        slots = parameter_slots(query, parameter_schemas(ctx, "query"))
        return hostile_variants(query, slots, QUERY_CHARACTERS)

    def flatmap_headers(ctx: Any, headers: Any) -> st.SearchStrategy[Any]:
        slots = parameter_slots(headers, parameter_schemas(ctx, "header"))
        return hostile_variants(headers, slots, HEADER_CHARACTERS, header=True)

    hooks: list[Callable[..., st.SearchStrategy[Any]]] = [
        flatmap_body,
        flatmap_query,
        flatmap_headers,
    ]
    for hook in hooks:
        schema.hook(hook)
