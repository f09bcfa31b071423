"""Fixtures for the deployment artefacts: docker-compose.yml, the rendered Kustomize overlays, and
the containers of our image in each (deploy/inventory.py).

The overlays are rendered by `deploy/check.sh render` (which installs kustomize on first use), or
read from CRM_DEPLOY_RENDERED when deploy/check.sh already rendered them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.inventory import Container, compose_containers, k8s_containers

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev", "prod")


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    directory = os.environ.get("CRM_DEPLOY_RENDERED")
    if not directory:
        subprocess.run(["bash", "deploy/check.sh", "render"], cwd=REPO, check=True)
        directory = str(REPO / ".cache" / "deploy" / "rendered")
    return {
        overlay: [
            d for d in yaml.safe_load_all((Path(directory) / f"{overlay}.yaml").read_text()) if d
        ]
        for overlay in OVERLAYS
    }


@pytest.fixture(scope="session")
def containers(
    compose: dict[str, Any], rendered: dict[str, list[dict[str, Any]]]
) -> list[Container]:
    found = compose_containers(compose)
    for overlay, docs in rendered.items():
        found += k8s_containers(overlay, docs)
    return found
