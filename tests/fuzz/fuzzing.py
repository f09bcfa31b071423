"""What every fuzz test does with a generated case: call the running service with a token
carrying every scope and check the response.

Checks: no 5xx; the status code, content type and body are the ones the OpenAPI document
declares for the operation; every error is RFC 9457 `application/problem+json` with `type`,
`title` and `status` equal to the HTTP status.

The OpenAPI document is the one `create_app().openapi()` builds in-process (the same code serves
`/openapi.json`; `test_fuzz_served_documents.py` checks that they are equal), so the tests are
parametrized per operation at collection time. `CRM_FUZZ_EXAMPLES` (default 25) bounds the
examples per operation; runs are derandomized (reproducible in CI) unless `CRM_FUZZ_RANDOM=1`.

Generation is schemathesis's, with two additions: RFC 3339 times at any offset and at the
calendar's edges (below), and control characters, NUL above all, in free text (`hostile_text`).
"""

from __future__ import annotations

import importlib
import json
import os
from datetime import timedelta, timezone
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from fuzz import hostile_text
from shared.http.auth import SCOPES, issue_dev_token
from shared.settings import ServiceSettings

PROBLEM_JSON = "application/problem+json"
EXAMPLES = int(os.environ.get("CRM_FUZZ_EXAMPLES", "25"))


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings of every fuzz suite: fixed examples unless CRM_FUZZ_RANDOM=1."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=os.environ.get("CRM_FUZZ_RANDOM") != "1",
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


FUZZ_SETTINGS = fuzz_settings(EXAMPLES)
AUTH = {
    "Authorization": "Bearer "
    + issue_dev_token(ServiceSettings(), scopes=list(SCOPES), subject="fuzz", ttl_seconds=6 * 3600)
}


# RFC 3339 times as a hostile client sends them: any offset within ±14 h, and often the edges
# of the calendar, where a valid time has no UTC datetime (`0001-01-01T00:00:00+14:00`) and
# arithmetic on it overflows. The default strategy stays near the present and in UTC, which is
# how such times reached the database as 500s unnoticed.
CALENDAR_EDGES = (
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59.999999Z",
)
_OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
DATE_TIMES = st.one_of(
    st.sampled_from(CALENDAR_EDGES),
    st.datetimes(timezones=_OFFSETS).map(lambda moment: moment.isoformat()),
)
schemathesis.openapi.format("date-time", DATE_TIMES)


def openapi_document(service: str) -> dict[str, Any]:
    module = importlib.import_module(f"services.{service}.main")
    document: dict[str, Any] = module.create_app().openapi()
    return document


def schema_of(service: str) -> OpenApiSchema:
    document = openapi_document(service)
    schema = schemathesis.openapi.from_dict(document)
    hostile_text.install(schema, document)
    return schema


def errors_are_problem_json(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx is application/problem+json with type, title and the status echoed."""
    if response.status_code < 400:
        return None
    content_type = ";".join(response.headers.get("content-type", [""]))
    assert content_type.startswith(PROBLEM_JSON), (
        f"{response.status_code} answered with content-type {content_type!r}, not {PROBLEM_JSON}"
    )
    body = json.loads(response.content)
    assert isinstance(body, dict), f"problem body is not an object: {body!r}"
    missing = {"type", "title", "status"} - set(body)
    assert not missing, f"problem body lacks {sorted(missing)}: {body}"
    assert body["status"] == response.status_code, (
        f"problem status {body['status']} != HTTP status {response.status_code}"
    )
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    errors_are_problem_json,
]


def call_and_check(case: Any, base_url: str) -> None:
    case.call_and_validate(base_url=base_url, headers=AUTH, checks=CHECKS, timeout=15)
