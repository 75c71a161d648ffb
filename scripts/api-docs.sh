#!/usr/bin/env bash
# The API reference, generated from the docstrings: docs/_build/api/index.html (or the folder given).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
python scripts/api_docs.py "$@"
