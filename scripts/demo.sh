#!/usr/bin/env bash
# The newcomer path, one command on a fresh machine: install cairn (CPU torch) into ./.venv, then run
# examples/pytorch_resume.py into ./cairn-runs: a PyTorch loop with autolog, killed with SIGKILL mid-epoch,
# resumed in the same run with weights identical to an uninterrupted run, the model logged with its
# signature, registered, aliased @champion and used through pyfunc. That example is the demo (not a script
# of its own) so that the test suite runs the very code the demo shows (tests/examples/).
#
#   CAIRN_VENV=/path/to/venv    use or create that venv instead of ./.venv (an existing one that already
#                               has cairn, torch and the UI is used as it is: nothing is installed)
#   CAIRN_TRACKING_URI=...      log somewhere else than ./cairn-runs
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CAIRN_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
if ! "$VENV/bin/python" - <<'PY' 2>/dev/null
import pathlib, cairn, torch, safetensors, starlette, uvicorn  # noqa: F401
assert pathlib.Path(cairn.__file__).resolve().is_relative_to(pathlib.Path("src").resolve())
PY
then
  echo "installing cairn with PyTorch (CPU) into $VENV ..."
  PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  # torch first, pinned: a looser spec would pull a multi-GB CUDA build.
  "${PIP[@]}" install "torch==2.13.0"
  "${PIP[@]}" install -e ".[torch,ui]"
fi

"$VENV/bin/python" examples/pytorch_resume.py "$@"
echo
echo "(run them in $PWD; the cairn command is in the venv: source $VENV/bin/activate, or $VENV/bin/cairn ...)"
echo "more examples, one per integration: ls examples/"
