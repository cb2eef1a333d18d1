#!/usr/bin/env bash
# Every shipped plugin exports exactly one dynamic symbol: cfamc_plugin_entry_v1.
set -euo pipefail
dir=$1
shopt -s nullglob
libs=("$dir"/*.so)
((${#libs[@]})) || { echo "no plugins in $dir"; exit 1; }
status=0
for lib in "${libs[@]}"; do
  exported=$(nm -D --defined-only "$lib" | awk '{print $3}' | sort)
  if [ "$exported" != "cfamc_plugin_entry_v1" ]; then
    echo "FAIL $lib exports: $(echo $exported | tr '\n' ' ')"
    status=1
  else
    echo "ok   $lib"
  fi
done
exit $status
