#!/usr/bin/env bash
# The test command: lint, type-check and the full test suite (DDP and slow tests included).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
echo "[premem] ruff" && ruff check lightning_premem tests examples benchmarks scripts
echo "[premem] mypy" && mypy
echo "[premem] pytest" && python -m pytest "$@"
