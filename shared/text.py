"""What PostgreSQL can store of a client's text: its text and jsonb types refuse the NUL
character (U+0000), and asyncpg cannot send half of a surrogate pair, which JSON may escape
alone (`"\\udfff"`) and a Python str then holds: it has no UTF-8. Both used to reach the
database as a 500; the HTTP edge (`shared.http.inputs.StorableText`) and the services' rules
for JSON they keep (profile's custom attributes) make them a 422 with these reasons."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# A str holds a surrogate only when JSON escaped one alone: a pair decodes to one character.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def unstorable_text_problem(value: str) -> str | None:
    """Why PostgreSQL cannot store `value` as text, or None when it can."""
    if "\x00" in value:
        return "must not contain the NUL character (U+0000)"
    if _LONE_SURROGATE.search(value):
        return "must not contain a lone surrogate (U+D800 to U+DFFF)"
    return None


def unstorable_text_in(value: object) -> str | None:
    """Why jsonb cannot hold `value` (a key or a string anywhere in it), or None when it can."""
    if isinstance(value, str):
        return unstorable_text_problem(value)
    if isinstance(value, Mapping):
        items: Iterable[object] = (part for pair in value.items() for part in pair)
    elif isinstance(value, list | tuple):
        items = value
    else:
        return None
    return next((p for item in items if (p := unstorable_text_in(item)) is not None), None)
