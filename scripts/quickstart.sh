#!/usr/bin/env bash
# The main job, from a fresh clone: setup, build, then the quickstart run (EMP-SSL on Fashion-MNIST,
# a few minutes on a CPU): it prints the accuracies of the trained encoder and of its controls, the
# untrained encoder and the raw pixels.
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
    robust, subset = metrics.get("robust_accuracy", {}), metrics.get("robust_subset", {})
    if robust and subset:  # robust and clean accuracy on the same (attacked) images
        attacks = ", ".join(f"{attack} {value:.4f}" for attack, value in robust.items())
        print(f"  {'':<26} on the {subset['images']:.0f} attacked images: clean {subset['clean_accuracy']:.4f}, {attacks}")
print(f"  training: {summary['train']['steps']} steps, {summary['train']['crops_per_s']:.0f} crops/s on {summary['run']['device']}")
PY
