#!/usr/bin/env bash
# Install cairn into ./.venv and run the quickstart: one run logged into ./cairn-runs.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CAIRN_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
"$VENV/bin/python" -m pip --disable-pip-version-check -q install -e .
"$VENV/bin/python" examples/quickstart.py
