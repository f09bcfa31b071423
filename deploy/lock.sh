#!/usr/bin/env bash
# Regenerate requirements.lock (the image's pinned, hashed runtime dependencies) from
# pyproject.toml's [project.dependencies]. Run after any change to them and commit the result:
#   bash deploy/lock.sh
# It keeps the pins it can; to move some on: bash deploy/lock.sh --upgrade-package pydantic-core
# (or --upgrade for all). `make install` installs at these pins too (see the Makefile).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=.venv/bin/uv
if [[ ! -x $UV ]]; then
  .venv/bin/python -m pip install --quiet 'uv>=0.5'
fi
# --universal: one lock valid for linux/amd64 and linux/arm64 images (markers instead of a platform).
SSL_CERT_FILE="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$UV" pip compile pyproject.toml \
  --universal --python-version 3.11 --generate-hashes --quiet \
  --custom-compile-command "bash deploy/lock.sh" \
  --output-file requirements.lock "$@"
# Record which dependency list the lock was made from: the deploy tests fail when it drifts.
digest=$(.venv/bin/python deploy/lockfile.py digest)
sed -i "2a # pyproject-dependencies-sha256: ${digest}" requirements.lock
echo "requirements.lock: $(grep -c '==' requirements.lock) pinned packages"
