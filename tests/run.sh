#!/usr/bin/env bash
# Runs the test suite, setting up the environment first (Debian packages + .venv) if needed.
# Usage: bash tests/run.sh [pytest args...]     e.g. bash tests/run.sh -k features
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash recipes/setup.sh
exec "$root/.venv/bin/python" -m pytest -q --durations=15 "$@" tests
