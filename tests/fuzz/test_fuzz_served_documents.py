"""The fuzz tests generate cases from the in-process OpenAPI documents: they must be the ones the
running services serve at /openapi.json (without authentication)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from fuzz.fuzzing import openapi_document
from shared.platform import SERVICES


@pytest.mark.parametrize("service", SERVICES)
def test_served_openapi_is_the_fuzzed_one(service: str, service_url: Callable[[str], str]) -> None:
    served = httpx.get(f"{service_url(service)}/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == openapi_document(service)
