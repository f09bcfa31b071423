"""The 360 document built from the one-row query (`schemas.view_360`)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from services.profile.schemas import Customer360, view_360


def _row(consents: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "kind": "person",
        "name": "Ada Lovelace",
        "registered_at": "2026-01-01T00:00:00+00:00",
        "version": 1,
        "updated_at": "2026-01-01T00:00:00+00:00",
        "consents": consents,
        "open_complaints": [],
        "purchase_count": 0,
        "first_at": None,
        "last_at": None,
        "total": Decimal(0),
        "refunded": Decimal(0),
        "recorded_at": None,
        "stage": None,
        "value_updated_at": None,
        "complaints_updated_at": None,
    }


def test_consents_updated_at_is_the_latest_instant_whatever_the_offsets() -> None:
    # PostgreSQL writes json_build_object's times in the session's time zone: a server set to
    # Europe/Berlin gives "+01:00" offsets, and the latest text is not the latest instant.
    consents = [
        {
            "purpose": "marketing_email",
            "status": "granted",
            "changed_at": "2026-03-01T10:00:00+01:00",  # 09:00 UTC
            "source": "web",
        },
        {
            "purpose": "marketing_sms",
            "status": "withdrawn",
            "changed_at": "2026-03-01T09:30:00+00:00",  # later
            "source": "web",
        },
    ]
    view = view_360(_row(consents), masked=True, currency="EUR")
    assert view["consents"]["updated_at"] == "2026-03-01T09:30:00+00:00"
    Customer360.model_validate(view)  # the document keeps its response model's shape
