#!/usr/bin/env bash
# One command runs the whole test suite on a fresh machine: set-up (idempotent), then pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k store -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
if [ -x .state/oracle/bin/python ] && [ -z "${PYBUILD_ORACLE_PYTHON:-}" ]; then
  export PYBUILD_ORACLE_PYTHON="$PWD/.state/oracle/bin/python"
fi
exec .venv/bin/python -m pytest -q "$@"
