"""The catalog's consumer table (documentation, AsyncAPI) says what the handler tables do."""

from __future__ import annotations

import pytest

from services.complaints.handlers import HANDLERS as COMPLAINTS
from services.lifecycle.handlers import HANDLERS as LIFECYCLE
from services.profile.handlers import HANDLERS as PROFILE
from services.profile.handlers import INGESTED_ORDER
from services.scoring.handlers import HANDLERS as SCORING
from shared.events.catalog import CONSUMERS


@pytest.mark.parametrize(
    ("service", "handlers"),
    [
        ("profile", PROFILE),
        ("lifecycle", LIFECYCLE),
        ("complaints", COMPLAINTS),
        ("scoring", SCORING),
    ],
)
def test_the_catalog_lists_exactly_the_types_each_service_handles(
    service: str, handlers: dict[str, object]
) -> None:
    # the ingest topic carries plain JSON orders, documented apart (not a CloudEvent type)
    handled = sorted(t for t in handlers if t != INGESTED_ORDER)
    assert sorted(CONSUMERS[service]) == handled
