#!/usr/bin/env bash
# Set up .venv (see setup.sh), then lint and run the whole test suite. Fails on any lint
# error, any test failure, and when pytest collects no tests (exit code 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "[test] ruff check"
.venv/bin/ruff check relaxgnn tests benchmarks
echo "[test] pytest"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "[test] pytest collected no tests: failing" >&2
    exit 1
fi
exit "$rc"
