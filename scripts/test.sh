#!/usr/bin/env bash
# Install everything the test suite needs into ./.venv, then run lint, types and tests.
# Fresh machine: `./scripts/test.sh`. CI runs exactly this (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${CAIRN_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "virtual environment $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
# torch first, pinned: a looser spec would pull a multi-GB CUDA build.
"${PIP[@]}" install "torch==2.13.0"
"${PIP[@]}" install -e ".[dev]"

step "PostgreSQL on 127.0.0.1:5432"
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
fi
pg_isready -h 127.0.0.1 -p 5432 || echo "PostgreSQL is not running: its tests will skip (they fail under CI=true)"

step "browser tests: Debian's chromium + playwright-core (never a downloaded browser)"
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
fi
if command -v npm >/dev/null; then (cd tests/ui/e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent); fi

step "ruff"
"$VENV/bin/ruff" check src tests benchmarks examples
"$VENV/bin/ruff" format --check src tests benchmarks examples

step "mypy"
"$VENV/bin/mypy"

step "pytest"
export HF_HUB_OFFLINE=1
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
