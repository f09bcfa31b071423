"""Schemathesis against the lifecycle service's OpenAPI document (see fuzzing.py for the checks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fuzz.fuzzing import FUZZ_SETTINGS, call_and_check, schema_of

schema = schema_of("lifecycle")


@schema.parametrize()
@FUZZ_SETTINGS
def test_lifecycle_api(case: Any, service_url: Callable[[str], str]) -> None:
    call_and_check(case, service_url("lifecycle"))
