"""deploy/README.md's commands refer to what exists: `crm` commands the CLI accepts, compose
services and profiles, rendered Kubernetes objects, Secrets the manifests reference, files; and
it documents every setting the services read."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from deploy.inventory import env_names, settings_class
from shared.cli import app
from shared.platform import SERVICES
from shared.settings import ServiceSettings

REPO = Path(__file__).resolve().parents[2]
GUIDE = (REPO / "deploy" / "README.md").read_text()
NAMESPACES = {"crm": "prod", "crm-dev": "dev"}


def commands() -> list[list[str]]:
    """Each command of the guide's shell blocks, split into words (pipelines split too)."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", GUIDE, re.DOTALL):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            for part in line.split(" | ") if line and not line.startswith("#") else []:
                found.append(shlex.split(part.replace(" > ", " ").replace(" -- ", " -- ")))
    return found


def selected(selector: str, labels: dict[str, str]) -> bool:
    for term in selector.split(","):
        if "!=" in term:
            key, value = term.split("!=")
            if labels.get(key) == value:
                return False
        else:
            key, value = term.split("=")
            if labels.get(key) != value:
                return False
    return True


def crm_accepts(args: list[str]) -> None:
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, (args, result.output)


def test_the_guide_has_commands_of_every_kind() -> None:
    heads = {" ".join(c[:2]) for c in commands()}
    for head in ("docker compose", "docker build", "kustomize build", "kubectl -n"):
        assert head in heads, head


@pytest.mark.parametrize("words", commands(), ids=lambda w: " ".join(w)[:70])
def test_every_command_refers_to_what_exists(
    words: list[str], compose: dict[str, Any], rendered: dict[str, list[dict[str, Any]]]
) -> None:
    tool = words[0]
    if tool == "docker" and words[1] == "compose":
        check_compose(words[2:], compose)
    elif tool == "docker" and words[1] == "build":
        assert (REPO / words[words.index("-f") + 1]).is_file()
    elif tool == "kustomize" and words[1] == "build":
        assert (REPO / words[2] / "kustomization.yaml").is_file()
    elif tool == "kustomize" and words[1:3] == ["edit", "set"]:
        assert words[4].split("=")[0] == "crm-lifecycle"
    elif tool == "kubectl":
        check_kubectl(words[1:], rendered)
    elif tool in ("bash", "python"):
        assert (REPO / words[1]).is_file()


def check_compose(words: list[str], compose: dict[str, Any]) -> None:
    services = compose["services"]
    profiles = {p for s in services.values() for p in s.get("profiles", [])}
    while words and words[0] == "--profile":
        assert words[1] in profiles
        words = words[2:]
    verb, rest = words[0], [w for w in words[1:] if not w.startswith("-")]
    if verb in ("run", "exec"):
        assert rest[0] in services, rest
        if rest[0] == "crm":
            crm_accepts(rest[1:])
    elif verb in ("stop", "start", "logs", "restart"):
        assert rest and all(name in services for name in rest), rest


def check_kubectl(words: list[str], rendered: dict[str, list[dict[str, Any]]]) -> None:
    overlay = NAMESPACES[words[words.index("-n") + 1]] if "-n" in words else "prod"
    docs = rendered[overlay]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    kinds = {"deploy": "Deployment", "job": "Job", "svc": "Service"}
    for word in words:
        kind, _, name = word.partition("/")
        if kind in kinds and name and "/" not in name:
            assert (kinds[kind], name) in names, word
    if "exec" in words and "--" in words:
        after = words[words.index("--") + 1 :]
        assert after[0] == "crm"
        crm_accepts(after[1:])
    if "-l" in words:
        selector = words[words.index("-l") + 1]
        labelled = [d["metadata"].get("labels", {}) for d in docs]
        assert any(selected(selector, labels) for labels in labelled), selector
    if words[:3] == ["create", "secret", "generic"] or "secret" in words[:4]:
        secret = next(w for w in words[words.index("secret") + 2 :] if not w.startswith("-"))
        assert secret in referenced_secrets(docs), secret
    if "-f" in words and words[words.index("-f") + 1].startswith("deploy/"):
        assert (REPO / words[words.index("-f") + 1]).is_file()


def referenced_secrets(docs: list[dict[str, Any]]) -> set[str]:
    found = set()
    for doc in docs:
        if doc["kind"] == "Ingress":
            found |= {t["secretName"] for t in doc["spec"].get("tls", [])}
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        found |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        for container in pod["containers"]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    found.add(ref["name"])
    return found


def test_the_first_apply_runs_migrations_and_holds_back_the_services(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (selector,) = {
        c[c.index("-l") + 1] for c in commands() if c[:2] == ["kubectl", "apply"] and "-l" in c
    }
    first = [d for d in rendered["prod"] if selected(selector, d["metadata"].get("labels", {}))]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in first}
    for service in SERVICES:
        assert ("Job", f"{service}-migrate") in kinds
        assert ("Deployment", f"{service}-api") not in kinds
        assert ("Deployment", f"{service}-worker") not in kinds
    assert {"ConfigMap", "KafkaTopic", "KafkaUser", "ServiceAccount"} <= {k for k, _ in kinds}


def test_every_setting_is_documented() -> None:
    read = env_names(ServiceSettings).union(*(env_names(settings_class(s)) for s in SERVICES))
    internal = {"SERVICE_NAME", "DATABASE_URL"}  # not configuration (see test_settings_coverage)
    undocumented = {name for name in read - internal if f"`{name}`" not in GUIDE}
    undocumented -= {
        n
        for n in undocumented
        if n.endswith("_DATABASE_URL") and "`<SERVICE>_DATABASE_URL`" in GUIDE and f"`{n}`" in GUIDE
    }
    assert not undocumented, sorted(undocumented)
