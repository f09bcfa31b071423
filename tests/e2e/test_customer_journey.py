"""A customer's journey across the four running services, read through profile's 360 view.

Register, buy twice, complain, close the complaint satisfied: after each step the 360 view (served
by profile from its own projections of lifecycle, scoring and complaint events) reflects the
stage, the tier and the complaint within a second; the closure also shows as service recovery in
lifecycle's own API and as satisfaction in scoring's loyalty. Polling with a deadline: a functional check of the event flow, not a
performance measurement.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from support import E2E_DEADLINE, auth

from shared.platform import Platform

pytestmark = pytest.mark.e2e

#: Each step must show in the 360 view within this many seconds.
DEADLINE = E2E_DEADLINE


def within(
    seconds: float,
    read: Callable[[], httpx.Response],
    ok: Callable[[dict[str, Any]], bool],
    parts: dict[str, Callable[[dict[str, Any]], bool]] | None = None,
) -> tuple[dict[str, Any], float]:
    """Poll until ok(body) holds; fail with the last body once `seconds` have passed.
    `parts` name conditions whose first success time is shown (which hop was slow)."""
    started = time.perf_counter()
    last: Any = None
    seen: dict[str, float] = {}
    while True:
        response = read()
        if response.status_code == 200:
            last = response.json()
            for name, part in (parts or {}).items():
                if name not in seen and part(last):
                    seen[name] = time.perf_counter() - started
            if ok(last):
                if parts:
                    print("  " + ", ".join(f"{n} {t * 1000:.0f} ms" for n, t in seen.items()))
                return last, time.perf_counter() - started
        else:
            last = (response.status_code, response.text[:300])
        if time.perf_counter() - started > seconds:
            raise AssertionError(f"not reflected within {seconds}s (reached: {seen}); last: {last}")
        time.sleep(0.02)


def warm_up(http: httpx.Client, platform: Platform, headers: dict[str, str]) -> None:
    """Consumer groups join and get partitions in the first seconds after start: let one
    throw-away customer's registration travel through lifecycle into the 360 view first."""
    profile = platform.url("profile")
    created = http.post(f"{profile}/v1/customers", json={"kind": "person"}, headers=headers)
    assert created.status_code == 201, created.text
    url = f"{profile}/v1/customers/{created.json()['id']}/360"
    within(60, lambda: http.get(url, headers=headers), lambda b: b["lifecycle"] is not None)


def test_register_buy_complain_is_reflected_in_the_360_view(platform: Platform) -> None:
    headers = auth()  # every scope, pii:read included
    profile = platform.url("profile")
    with httpx.Client(timeout=5) as http:
        warm_up(http, platform, headers)
        registered = http.post(
            f"{profile}/v1/customers",
            json={
                "kind": "person",
                "name": "Journey Person",
                "email": f"journey-{uuid.uuid4().hex[:8]}@example.com",
                "consents": {"marketing_email": "granted"},
            },
            headers=headers,
        )
        assert registered.status_code == 201, registered.text
        customer_id = registered.json()["id"]
        url_360 = f"{profile}/v1/customers/{customer_id}/360"

        def view() -> httpx.Response:
            return http.get(url_360, headers=headers)

        # 1. registered -> prospect
        body, took = within(
            DEADLINE, view, lambda b: (b["lifecycle"] or {}).get("stage") == "prospect"
        )
        assert body["profile"]["name"] == "Journey Person" and not body["profile"]["masked"]
        assert body["consents"]["items"][0]["purpose"] == "marketing_email"
        print(f"registered -> 360 prospect in {took * 1000:.0f} ms")

        # 2. first purchase -> growth, a value score with a tier
        first = http.post(
            f"{profile}/v1/customers/{customer_id}/purchases",
            json={
                "order_id": f"J-{uuid.uuid4().hex[:8]}",
                "amount": "120.00",
                "currency": "USD",
                "items": [
                    {"sku": "BOOT-1", "category": "shoes", "quantity": 1, "unit_price": "120.00"}
                ],
            },
            headers=headers,
        )
        assert first.status_code == 201, first.text
        scoring_url = f"{platform.url('scoring')}/v1/customers/{customer_id}/value"
        try:
            body, took = within(
                DEADLINE,
                view,
                lambda b: (
                    (b["lifecycle"] or {}).get("stage") == "growth"
                    and b["purchases"]["count"] == 1
                    and (b["value"] or {}).get("tier") is not None
                ),
                parts={
                    "stage growth": lambda b: (b["lifecycle"] or {}).get("stage") == "growth",
                    "tier": lambda b: (b["value"] or {}).get("tier") is not None,
                },
            )
        except AssertionError as missed:
            # Say which hop was late: scoring itself, or its event on the way to profile.
            at_scoring = http.get(scoring_url, headers=headers)
            raise AssertionError(
                f"{missed}\nscoring answers now: {at_scoring.status_code} {at_scoring.text[:400]}"
            ) from missed
        assert body["purchases"]["total"] == "120.00"
        assert body["lifecycle"]["reason"] == "first_purchase"
        first_tier = body["value"]["tier"]
        assert first_tier in {"key", "major", "ordinary", "small"}
        print(f"first purchase -> 360 growth, tier {first_tier} in {took * 1000:.0f} ms")

        # 3. second purchase -> counted, still scored
        second = http.post(
            f"{profile}/v1/customers/{customer_id}/purchases",
            json={"order_id": f"J-{uuid.uuid4().hex[:8]}", "amount": "30.00", "currency": "USD"},
            headers=headers,
        )
        assert second.status_code == 201, second.text
        body, took = within(
            DEADLINE,
            view,
            lambda b: b["purchases"]["count"] == 2 and (b["value"] or {}).get("tier") is not None,
        )
        assert body["purchases"]["total"] == "150.00"
        print(f"second purchase -> 360 in {took * 1000:.0f} ms (tier {body['value']['tier']})")

        # 4. a high-severity complaint -> open in the 360, stage decline (reason complaint)
        complaint_body = {
            "customer_id": customer_id,
            "channel": "email",
            "category": "delivery",
            "severity": "high",
            "subject": "Boots arrived damaged",
            "description": "The left boot's sole is split.",
        }
        complaints = platform.url("complaints")
        opened = http.post(f"{complaints}/v1/complaints", json=complaint_body, headers=headers)
        assert opened.status_code == 201, opened.text
        complaint_id = opened.json()["id"]
        body, took = within(
            DEADLINE,
            view,
            lambda b: (
                any(c["complaint_id"] == complaint_id for c in b["complaints"]["open"])
                and (b["lifecycle"] or {}).get("stage") == "decline"
            ),
        )
        [complaint] = body["complaints"]["open"]
        assert (complaint["severity"], complaint["category"]) == ("high", "delivery")
        assert body["complaints"]["open_count"] == 1
        assert body["lifecycle"]["reason"] == "complaint"
        assert body["value"]["tier"] is not None
        print(f"complaint -> 360 open complaint, stage decline in {took * 1000:.0f} ms")

        # 5. scoring counted the open complaint: unknown satisfaction (50) less the open penalty
        def value() -> httpx.Response:
            return http.get(scoring_url, headers=headers)

        scored_open, _ = within(
            DEADLINE,
            value,
            lambda v: v["aggregates"]["open_complaints"] == 1 and v["loyalty"] is not None,
        )
        assert scored_open["loyalty"]["satisfaction"] == 50.0
        attitudinal_open = scored_open["loyalty"]["attitudinal"]
        assert attitudinal_open < 50.0  # the open-complaint penalty

        # 6. the complaint through its workflow to closed with satisfaction 5
        policy = http.get(f"{complaints}/v1/complaints/policy", headers=headers)
        assert policy.status_code == 200, policy.text
        root_cause = policy.json()["root_causes"][0]
        steps: list[tuple[str, dict[str, Any]]] = [
            ("acknowledge", {"message": "Sorry about the boots, we are on it."}),
            ("investigate", {}),
            ("propose", {"proposed_resolution": "A new pair, shipped today."}),
            (
                "resolve",
                {
                    "root_cause": root_cause,
                    "root_cause_detail": "Sole glued badly in one batch.",
                    "resolution": "Replacement pair delivered.",
                },
            ),
            ("close", {"satisfaction": 5, "feedback": "Quick and kind, thank you."}),
        ]
        for step, step_body in steps:
            moved = http.post(
                f"{complaints}/v1/complaints/{complaint_id}/{step}", json=step_body, headers=headers
            )
            assert moved.status_code == 200, (step, moved.status_code, moved.text)
        closed = moved.json()
        assert (closed["status"], closed["satisfaction"]) == ("closed", 5)

        # 7. DOMAIN.md §1: every complaint that caused the decline closed with satisfaction >= 4
        #    -> back to the stage before (growth), reason service_recovery; no open complaint
        body, took = within(
            DEADLINE,
            view,
            lambda b: (
                b["complaints"]["open_count"] == 0
                and (b["lifecycle"] or {}).get("reason") == "service_recovery"
            ),
            parts={
                "complaint closed": lambda b: b["complaints"]["open_count"] == 0,
                "service recovery": lambda b: (
                    (b["lifecycle"] or {}).get("reason") == "service_recovery"
                ),
            },
        )
        assert body["complaints"]["open"] == [] and not body["complaints"]["sla_breached"]
        assert body["lifecycle"]["stage"] == "growth"
        print(f"closure -> 360 no open complaint, stage growth in {took * 1000:.0f} ms")

        lifecycle = http.get(
            f"{platform.url('lifecycle')}/v1/customers/{customer_id}/lifecycle", headers=headers
        )
        assert lifecycle.status_code == 200, lifecycle.text
        stages = lifecycle.json()
        assert (stages["stage"], stages["reason"]) == ("growth", "service_recovery")
        assert stages["open_complaints"] == [] and stages["decline_causes"] == []
        assert stages["stage_before_decline"] is None
        assert [(t["from_stage"], t["to_stage"], t["reason"]) for t in stages["history"]] == [
            (None, "prospect", "registered"),
            ("prospect", "growth", "first_purchase"),
            ("growth", "decline", "complaint"),
            ("decline", "growth", "service_recovery"),
        ]
        assert stages["history"][-1]["trigger"] == "complaint_closed"

        # 8. scoring: the closed complaint's CSAT 5 -> satisfaction 100, no open-complaint penalty
        scored, took = within(
            DEADLINE,
            value,
            lambda v: (
                v["aggregates"]["open_complaints"] == 0
                and v["aggregates"]["closed_complaints_with_csat"] == 1
            ),
        )
        assert scored["aggregates"]["mean_csat"] == 5.0
        assert scored["loyalty"]["satisfaction"] == 100.0
        assert scored["loyalty"]["attitudinal"] == 100.0 > attitudinal_open
        print(f"closure -> scoring satisfaction 100, attitudinal 100 in {took * 1000:.0f} ms")
