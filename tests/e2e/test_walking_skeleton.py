"""The foundation's promise, end to end over HTTP and Kafka: registering a customer and recording a
purchase in profile moves the customer to growth in lifecycle and updates scoring, within a second."""

from __future__ import annotations

import uuid

import httpx
import pytest
from support import E2E_DEADLINE, auth, wait_for

from shared.platform import Platform

pytestmark = pytest.mark.e2e


def test_register_and_purchase_move_lifecycle_and_scoring(platform: Platform) -> None:
    headers = auth()
    with httpx.Client(timeout=5) as http:
        email = f"e2e-{uuid.uuid4().hex[:8]}@example.com"
        created = http.post(
            f"{platform.url('profile')}/v1/customers",
            json={"kind": "person", "email": email},
            headers=headers,
        )
        assert created.status_code == 201, created.text
        customer_id = created.json()["id"]

        lifecycle_url = f"{platform.url('lifecycle')}/v1/customers/{customer_id}/lifecycle"
        prospect, _ = wait_for(
            lambda: http.get(lifecycle_url, headers=headers),
            lambda b: b["stage"] == "prospect",
            within=10,
        )
        assert prospect["customer_id"] == customer_id

        purchase = {
            "order_id": f"e2e-{uuid.uuid4().hex[:8]}",
            "amount": "129.90",
            "currency": "USD",
        }
        recorded = http.post(
            f"{platform.url('profile')}/v1/customers/{customer_id}/purchases",
            json=purchase,
            headers=headers,
        )
        assert recorded.status_code == 201, recorded.text

        _, took = wait_for(
            lambda: http.get(lifecycle_url, headers=headers),
            lambda b: b["stage"] == "growth",
            within=E2E_DEADLINE,
        )
        print(f"purchase -> lifecycle growth in {took * 1000:.0f} ms")

        value_url = f"{platform.url('scoring')}/v1/customers/{customer_id}/value"
        value, took = wait_for(
            lambda: http.get(value_url, headers=headers), lambda b: bool(b), within=E2E_DEADLINE
        )
        print(f"purchase -> scoring updated in {took * 1000:.0f} ms")
        assert str(customer_id) in str(value)

        again = http.post(
            f"{platform.url('profile')}/v1/customers/{customer_id}/purchases",
            json=purchase,
            headers=headers,
        )
        assert (
            again.status_code == 200 and again.json()["id"] == recorded.json()["id"]
        )  # idempotent on order_id


def test_every_service_is_healthy_and_guarded(platform: Platform) -> None:
    with httpx.Client(timeout=5) as http:
        for service in platform.services:
            base = platform.url(service)
            assert http.get(f"{base}/health/live").status_code == 200
            ready = http.get(f"{base}/health/ready")
            assert ready.status_code == 200 and ready.json()["checks"] == {
                "database": "ok",
                "kafka": "ok",
            }
            metrics = http.get(f"{base}/metrics").text
            assert "crm_http_request_duration_seconds" in metrics
            spec = http.get(f"{base}/openapi.json").json()
            guarded = [p for p in spec["paths"] if p.startswith("/v1")]
            assert guarded, f"{service} exposes no /v1 resources"
            for path in guarded:
                methods = spec["paths"][path]
                if "get" in methods and "{" not in path:
                    response = http.get(f"{base}{path}")
                    assert response.status_code == 401, (service, path, response.status_code)
                    assert response.headers["content-type"] == "application/problem+json"
