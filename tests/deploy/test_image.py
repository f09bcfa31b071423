"""The image: what deploy/Dockerfile builds from (the build context and the lock), what its
final stage holds, and the HEALTHCHECK script."""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import http.server
import importlib.metadata
import json
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import healthcheck, lockfile

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
# Imports that the image does not need: the embedded development stack (`crm up`, dev extra)
# and `crm docs --check` (a development command).
DEVELOPMENT_ONLY = {"shared/devstack": "*", "shared/events/catalog.py": "jsonschema"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in joined.splitlines()
        if line.strip()
    ]


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction, args in instructions(DOCKERFILE.read_text()):
        if instruction == "FROM":
            found.append([])
        if found:
            found[-1].append((instruction, args))
    return found


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        if pattern.startswith("**/"):
            regex = "(.*/)?" + fnmatch.translate(pattern[3:]).replace(".*", "[^/]*")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negated
    return excluded


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_final_stage_runs_crm_as_a_non_root_user_with_a_healthcheck() -> None:
    build, runtime = stages()
    final = dict(runtime)
    assert final["USER"] == "10001:10001"
    assert json.loads(final["ENTRYPOINT"]) == ["crm"]
    assert "/opt/crm/healthcheck.py" in final["HEALTHCHECK"]
    # Only the built venv and the healthcheck script come in; no package manager runs there.
    copies = [args for instruction, args in runtime if instruction == "COPY"]
    assert copies == [
        "--from=build /opt/crm /opt/crm",
        "deploy/healthcheck.py /opt/crm/healthcheck.py",
    ]
    runs = " ".join(args for instruction, args in runtime if instruction == "RUN")
    assert (
        "apt-get install" not in runs and "pip uninstall --yes --quiet pip setuptools wheel" in runs
    )
    assert build[0][1].endswith("AS build") and runtime[0][1].endswith("AS runtime")


def test_dependencies_come_from_the_lock_with_hashes_and_wheels_only() -> None:
    build = stages()[0]
    runs = [args for instruction, args in build if instruction == "RUN"]
    lock_install = next(r for r in runs if "requirements.lock" in r)
    for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:"):
        assert flag in lock_install
    assert any("install --no-deps /tmp/wheels/*.whl" in r for r in runs)


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    patterns = dockerignore()
    for instruction, args in instructions(DOCKERFILE.read_text()):
        if instruction == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                if "[" in source:  # README.m[d]: optional by design
                    continue
                assert (REPO / source).exists(), source
                assert not dockerignored(source, patterns), source
    for inside in ("shared/settings.py", "services/profile/migrations/env.py", "requirements.lock"):
        assert not dockerignored(inside, patterns), inside
    for outside in (
        ".venv/bin/python",
        ".git/HEAD",
        ".data/pg",
        ".cache/kafka",
        "tests/conftest.py",
        "shared/__pycache__/cli.cpython-311.pyc",
        "docker-compose.yml",
        "deploy/k8s/base/kustomization.yaml",
    ):
        assert dockerignored(outside, patterns), outside


def test_the_dockerignore_matcher_follows_docker_rules() -> None:
    assert dockerignored("a/b.py", ["*"])
    assert not dockerignored("a/b.py", ["*", "!a/"])
    assert dockerignored("a/__pycache__/x.pyc", ["*", "!a/", "**/__pycache__"])
    assert not dockerignored("a/b.py", ["*.md"])


# -- HEALTHCHECK ------------------------------------------------------------------------------


def test_the_port_comes_from_the_serve_command_line() -> None:
    assert (
        healthcheck.serve_port(["crm", "serve", "scoring", "--role", "api", "--port", "9000"])
        == 9000
    )
    assert healthcheck.serve_port(["crm", "serve", "scoring", "--port=9001"]) == 9001
    assert (
        healthcheck.serve_port(["/opt/crm/bin/crm", "serve", "complaints", "--role", "worker"])
        == 8003
    )
    assert healthcheck.serve_port(["crm", "migrate", "profile"]) is None


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health/live" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def health_server() -> Iterator[int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_the_healthcheck_reports_live_and_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    with health_server() as port:
        monkeypatch.setenv("CRM_HEALTH_PORT", str(port))
        assert healthcheck.main([]) == 0
        assert healthcheck.main(["--ready"]) == 1
    assert healthcheck.main([]) == 1  # nothing listens any more


def test_the_healthcheck_reads_the_command_line_of_pid_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve, migrate = tmp_path / "serve", tmp_path / "migrate"
    serve.write_bytes(b"/opt/crm/bin/python\0/opt/crm/bin/crm\0serve\0lifecycle\0--role\0worker\0")
    migrate.write_bytes(b"/opt/crm/bin/python\0/opt/crm/bin/crm\0migrate\0profile\0")
    assert healthcheck.serve_port(healthcheck.main_argv(serve)) == 8002
    argv = healthcheck.main_argv(migrate)
    assert argv == ["/opt/crm/bin/python", "/opt/crm/bin/crm", "migrate", "profile"]
    # A one-shot command has no server to probe: the container counts as healthy.
    monkeypatch.delenv("CRM_HEALTH_PORT", raising=False)
    monkeypatch.setattr(healthcheck, "main_argv", lambda: argv)
    assert healthcheck.main([]) == 0


# -- the lock ---------------------------------------------------------------------------------


def test_the_lock_pins_every_runtime_dependency_of_pyproject() -> None:
    text = lockfile.LOCK.read_text()
    requirements = lockfile.runtime_requirements()
    assert lockfile.unpinned(requirements, text) == []
    assert lockfile.recorded_digest(text) == lockfile.digest(requirements), (
        "run `bash deploy/lock.sh`"
    )
    assert "--hash=sha256:" in text


def test_the_lock_check_notices_a_missing_or_outdated_pin() -> None:
    lock = "fastapi==0.100.0 \\\n    --hash=sha256:00\n"
    assert lockfile.unpinned([">=3.11", "fastapi>=0.115", "numpy>=1.26"], lock) == [
        "fastapi>=0.115 (lock: 0.100.0)",
        "numpy>=1.26 (lock: absent)",
    ]


def _third_party_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted([*REPO.glob("shared/**/*.py"), *REPO.glob("services/**/*.py")]):
        relative = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("shared", "services", "__future__"):
                    continue
                skip = [v for k, v in DEVELOPMENT_ONLY.items() if relative.startswith(k)]
                if skip and skip[0] in ("*", top):
                    continue
                found.setdefault(top, set()).add(relative)
    return found


def test_every_library_the_code_imports_is_in_the_lock() -> None:
    pinned = lockfile.pins(lockfile.LOCK.read_text())
    distributions = importlib.metadata.packages_distributions()
    missing = {
        module: sorted(files)[:3]
        for module, files in _third_party_imports().items()
        if not any(
            lockfile.canonicalize_name(d) in pinned for d in distributions.get(module, [module])
        )
    }
    assert not missing, (
        f"imported but not locked (add to pyproject.toml, then `bash deploy/lock.sh`): {missing}"
    )
