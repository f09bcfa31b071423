"""The fuzzer does put control characters where `hostile_text` says, and only there (no service
is started: this draws cases from the schemas)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

from fuzz.fuzzing import openapi_document, schema_of
from fuzz.hostile_text import HEADER_CHARACTERS, Slot, text_slots, with_character

DRAWS = 200


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def drawn_cases(service: str, label: str) -> list[Any]:
    method, path = label.split(" ", 1)
    operation = schema_of(service)[path][method]
    cases: list[Any] = []

    @settings(
        max_examples=DRAWS,
        database=None,
        derandomize=True,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    def draw(case: Any) -> None:
        cases.append(case)

    draw()
    return cases


def test_json_bodies_often_carry_nul_and_lone_surrogates() -> None:
    seen: Counter[str] = Counter()
    for case in drawn_cases("complaints", "POST /v1/complaints"):
        texts = [case.body["subject"], case.body["description"]] if case.body else []
        seen["nul"] += any("\x00" in text for text in texts)
        seen["surrogate"] += any("\ud800" <= char <= "\udfff" for t in texts for char in t)
        # the enums and the uuid stay valid: the request gets past them
        seen["bad uuid"] += case.body is not None and "\x00" in case.body["customer_id"]
    # Schemathesis alone: NUL in about 1% of the cases, a lone surrogate never.
    assert seen["nul"] >= DRAWS // 20, seen
    assert seen["surrogate"] >= 2, seen
    assert seen["bad uuid"] == 0


def test_queries_carry_nul_but_no_surrogate_and_headers_only_what_http_allows() -> None:
    seen: Counter[str] = Counter()
    for case in drawn_cases("profile", "GET /v1/customers"):
        query = [value for value in (case.query or {}).values() if isinstance(value, str)]
        seen["nul"] += any("\x00" in value for value in query)
        assert not any("\ud800" <= char <= "\udfff" for value in query for char in value)
    assert seen["nul"] >= DRAWS // 40, seen
    for case in drawn_cases("profile", "POST /v1/customers"):
        key = (case.headers or {}).get("Idempotency-Key")
        if key is None:
            continue
        seen["changed key"] += any(char in HEADER_CHARACTERS for char in key)
        assert all(char == "\t" or " " <= char <= "~" or "\x80" <= char <= "\xff" for char in key)
        assert not key[:1].isspace() and key[-1:] not in (" ", "\t"), repr(key)
    assert seen["changed key"] >= DRAWS // 20, seen


def test_free_text_places_follow_the_schema() -> None:
    document = openapi_document("profile")
    components = document["components"]["schemas"]
    create = document["paths"]["/v1/customers"]["post"]["requestBody"]["content"]
    schema = create["application/json"]["schema"]
    body = {
        "name": "Jane",
        "kind": "person",  # an enum
        "referred_by": "0b233bdb-0df3-4926-a8cb-9f2da045d73e",  # format: uuid
        "consents": {"profiling": "granted"},  # enum keys and values
        "tags": ["vip"],
        "custom_attributes": {"tier": {"note": "gold"}},
    }
    assert set(text_slots(body, schema, components)) == {
        Slot(("name",)),
        Slot(("tags", 0)),
        Slot(("custom_attributes", "tier"), is_key=True),
        Slot(("custom_attributes", "tier", "note"), is_key=True),
        Slot(("custom_attributes", "tier", "note")),
    }
    changed = with_character(
        body, Slot(("custom_attributes", "tier"), is_key=True), "\x00", 1, False
    )
    assert changed["custom_attributes"] == {"t\x00ier": {"note": "gold"}}
    assert body["custom_attributes"] == {"tier": {"note": "gold"}}
