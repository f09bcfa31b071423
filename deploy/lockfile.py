"""requirements.lock against pyproject.toml: the digest the lock was made from, and whether every
runtime dependency is pinned there. `python deploy/lockfile.py digest|check`."""

from __future__ import annotations

import hashlib
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"
DIGEST_LINE = re.compile(r"^# pyproject-dependencies-sha256: ([0-9a-f]{64})$", re.MULTILINE)
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def runtime_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    return [str(project["requires-python"]), *sorted(str(d) for d in project["dependencies"])]


def digest(requirements: list[str]) -> str:
    return hashlib.sha256("\n".join(requirements).encode()).hexdigest()


def recorded_digest(lock_text: str) -> str | None:
    found = DIGEST_LINE.search(lock_text)
    return found.group(1) if found else None


def pins(lock_text: str) -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in PIN.findall(lock_text)}


def unpinned(requirements: list[str], lock_text: str) -> list[str]:
    """Runtime requirements the lock does not pin with a version they accept."""
    pinned = pins(lock_text)
    problems = []
    for line in requirements[1:]:
        requirement = Requirement(line)
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{line} (lock: {version or 'absent'})")
    return problems


def main(argv: list[str]) -> int:
    requirements = runtime_requirements()
    if argv[1:] == ["digest"]:
        print(digest(requirements))
        return 0
    if argv[1:] == ["check"]:
        text = LOCK.read_text()
        problems = unpinned(requirements, text)
        if recorded_digest(text) != digest(requirements):
            problems.append("pyproject.toml dependencies changed since the lock was made")
        for problem in problems:
            print(f"requirements.lock: {problem} — run `bash deploy/lock.sh`", file=sys.stderr)
        return 1 if problems else 0
    print("usage: lockfile.py digest|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
