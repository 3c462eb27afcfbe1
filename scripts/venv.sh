# Sourced by scripts/demo and scripts/test: make .venv and install edgeagent into it (non-editable,
# so the Cython kernels are compiled into the installed package exactly as on a board).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${EDGEAGENT_VENV:-$ROOT/.venv}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    echo "edgeagent needs Python >= 3.10 (found $("$PYTHON" --version))" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
install_edgeagent() {  # $1: extras, e.g. "[test]" or ""
    # (the filter hides pip's notes about index locations that do not exist on this machine)
    "$VENV/bin/python" -m pip install --quiet "$ROOT$1" 2>&1 | { grep -v "^WARNING: Location" || true; }
}
