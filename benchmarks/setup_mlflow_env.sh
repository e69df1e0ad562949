#!/usr/bin/env bash
# Create benchmarks/.venv-mlflow: an isolated virtualenv holding MLflow, used only by the
# benchmarks to measure MLflow side by side. cairn never depends on MLflow.
#
# Usage: bash benchmarks/setup_mlflow_env.sh [python]   (default python: python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-mlflow"
python="${1:-python3}"

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import mlflow, sqlalchemy, alembic" 2>/dev/null; then
    echo "mlflow venv ready: $venv ($("$venv/bin/python" -c 'import mlflow; print(mlflow.__version__)'))"
    exit 0
fi

"$python" -m venv "$venv"
pip_install() {
    # pip warns once per package about index locations that do not exist on some machines.
    "$venv/bin/python" -m pip install --quiet "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
pip_install --upgrade pip
# Full mlflow: it brings sqlalchemy + alembic, which the sqlite:/// tracking store needs.
# It does not bring torch; nothing here may install it.
pip_install mlflow
if "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "error: torch ended up in $venv; the benchmark venv must not hold it" >&2
    exit 1
fi
"$venv/bin/python" -c "import mlflow, sqlalchemy, alembic; print('mlflow', mlflow.__version__, 'ready in $venv')"
