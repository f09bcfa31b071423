"""The image's HEALTHCHECK: GET /health/live (or /health/ready with --ready) of the `crm serve`
process in this container, on the port it was started with. Standard library only.

The port comes from CRM_HEALTH_PORT, else from PID 1's `--port`, else the service's contract
port. A container running a one-shot command (migrate, topics, dlq) has nothing to probe: healthy.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

CONTRACT_PORTS = {"profile": 8001, "lifecycle": 8002, "complaints": 8003, "scoring": 8004}


def serve_port(argv: Sequence[str]) -> int | None:
    """The port `crm serve SERVICE [--port N]` listens on, or None when argv is not a serve."""
    if "serve" not in argv:
        return None
    rest = list(argv[argv.index("serve") + 1 :])
    for i, arg in enumerate(rest):
        if arg == "--port" and i + 1 < len(rest):
            return int(rest[i + 1])
        if arg.startswith("--port="):
            return int(arg.split("=", 1)[1])
    service = next((a for a in rest if not a.startswith("-")), None)
    return CONTRACT_PORTS.get(service or "")


def main_argv(cmdline: Path = Path("/proc/1/cmdline")) -> list[str]:
    try:
        return [a for a in cmdline.read_bytes().decode().split("\0") if a]
    except OSError:
        return []


def probe(port: int, path: str, timeout: float = 4.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def main(args: Sequence[str]) -> int:
    explicit = os.environ.get("CRM_HEALTH_PORT")
    port = int(explicit) if explicit else serve_port(main_argv())
    if port is None:
        return 0
    return 0 if probe(port, "/health/ready" if "--ready" in args else "/health/live") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
