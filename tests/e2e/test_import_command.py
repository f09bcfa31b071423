"""`crm import purchases` against the profile process: the file's orders recorded, the progress
followed on stderr, the summary alone on stdout, and the customers it creates moving on."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from support import auth, wait_for

from shared.platform import Platform

pytestmark = pytest.mark.e2e


def test_import_command_follows_the_import_to_its_summary(
    platform: Platform, tmp_path: Path
) -> None:
    m = uuid.uuid4().hex[:8]
    orders = 6000  # three of the service's chunks: progress to follow
    csv = tmp_path / "orders.csv"
    day = {n: f"2024-{1 + n % 12:02d}-{1 + n % 28:02d}" for n in range(orders)}
    csv.write_text(
        "external_ref,order_id,occurred_at,amount,currency\n"
        + "".join(f"cli-{m}-{n % 50},{m}-{n},{day[n]}T10:00:00Z,19.90,USD\n" for n in day)
    )
    token = auth("customers:read", "customers:write")["Authorization"].removeprefix("Bearer ")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "import",
            "purchases",
            str(csv),
            "--url",
            platform.url("profile"),
            "--token",
            token,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # stdout: the summary alone
    assert summary["status"] == "done"
    assert (summary["orders_done"], summary["purchases_created"]) == (orders, orders)
    assert summary["customers_created"] == 50
    assert f"import {summary['id']} running; following it at " in done.stderr
    assert "done in" in done.stderr

    # The import's customers move on like any other: lifecycle counts every order of one.
    headers = auth()
    with httpx.Client(timeout=5) as http:
        found = http.get(
            f"{platform.url('profile')}/v1/customers",
            params={"q": f"cli-{m}-49"},
            headers=headers,
        )
        assert found.status_code == 200, found.text
        (customer,) = found.json()["items"]
        lifecycle, _ = wait_for(
            lambda: http.get(
                f"{platform.url('lifecycle')}/v1/customers/{customer['id']}/lifecycle",
                headers=headers,
            ),
            lambda body: body["purchase_days"] == len({day[n] for n in day if n % 50 == 49}),
            within=60,
        )
        assert lifecycle["history"][0]["reason"] == "registered"
        assert lifecycle["history"][1]["reason"] == "first_purchase"
