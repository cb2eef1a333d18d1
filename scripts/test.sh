#!/usr/bin/env bash
# The whole test suite, from a fresh clone: setup, build, ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
ctest --preset default
