#!/usr/bin/env bash
# Setup, then configure and build with the "default" preset (build/). Extra arguments go to the configure step.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --preset default "$@" >/dev/null
cmake --build --preset default
