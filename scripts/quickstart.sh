#!/usr/bin/env bash
# The main job, from a fresh clone: setup, build, then the quickstart run file through cfamc-host.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
./build/bin/cfamc-host --version
./build/bin/cfamc-host --list-plugins
./build/bin/cfamc-host --config configs/quickstart.toml --validate "$@"
