"""Validate rendered Kubernetes manifests: built-in kinds against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict: unknown fields fail) for each given Kubernetes version, custom
resources against deploy/schemas/custom-resources.json.

    python deploy/validate.py --kubernetes 1.30.0 --kubernetes 1.37.0 rendered/*.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

CUSTOM_SCHEMAS = Path(__file__).resolve().parent / "schemas" / "custom-resources.json"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def problems(doc: dict[str, Any], versions: list[str], custom: dict[str, Any]) -> list[str]:
    key = f"{doc.get('apiVersion')}/{doc.get('kind')}"
    if key in custom:
        validator = jsonschema.Draft202012Validator(custom[key])
        return [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)
        ]
    found = []
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            found.append(f"k8s {version}: {'/'.join(map(str, error.path))}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            found.append(f"k8s {version}: {error.message}")
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubernetes", action="append", required=True, help="e.g. 1.30.0")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    custom = {k: v for k, v in json.loads(CUSTOM_SCHEMAS.read_text()).items() if "/" in k}
    failed = 0
    for path in args.files:
        docs = documents(path)
        for doc in docs:
            name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            for problem in problems(doc, args.kubernetes, custom):
                failed += 1
                print(f"{path}: {name}: {problem}", file=sys.stderr)
        print(
            f"{path}: {len(docs)} resources checked against Kubernetes {', '.join(args.kubernetes)}"
        )
    if failed:
        print(f"{failed} problem(s)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
