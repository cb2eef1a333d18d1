#!/usr/bin/env bash
# The main job, from a fresh clone: setup, build, then the quickstart run (EMP-SSL on Fashion-MNIST,
# a few minutes on a CPU): it prints the accuracies of the trained and the untrained encoder.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
./build/bin/cfamc-host --version
./build/bin/cfamc-host --config configs/quickstart.toml --fresh "$@"
python3 - <<'PY'
import json
summary = json.load(open("runs/quickstart/summary.json"))
print("\nquickstart: run directory runs/quickstart/ (summary.json, metrics.jsonl, checkpoints/)")
for name, metrics in sorted(summary["eval"].items()):
    print(f"  {name:<26} accuracy {metrics['accuracy']:.4f}")
print(f"  training: {summary['train']['steps']} steps, {summary['train']['crops_per_s']:.0f} crops/s on {summary['run']['device']}")
PY
