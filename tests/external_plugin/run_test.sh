#!/usr/bin/env bash
# Installs cfamc into a temporary prefix, builds tests/external_plugin against that installed SDK as a
# separate CMake project, and has the installed cfamc-host load it. Arguments: the cfamc build directory,
# this folder, and the CMAKE_PREFIX_PATH that found LibTorch.
set -euo pipefail
build=$1 source=$2 torch_prefix=$3
work="$build/external_plugin_test"   # a fixed place, so ccache recognises the compile next time
rm -rf "$work"
mkdir -p "$work"

cmake --install "$build" --prefix "$work/prefix" >/dev/null
launcher=(); command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
export CCACHE_BASEDIR="$work"
cmake -S "$source" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" \
  -DCMAKE_PREFIX_PATH="$work/prefix;$torch_prefix" >"$work/configure.log" 2>&1 ||
  { cat "$work/configure.log"; exit 1; }
cmake --build "$work/build" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }

host="$work/prefix/bin/cfamc-host"
export CFAMC_PLUGIN_PATH="$work/build"
list=$("$host" --list-plugins --json)
echo "$list" | grep -q '"name": "random_sign"' || { echo "installed host does not list random_sign"; exit 1; }
echo "$list" | grep -q "\"file\": \"$work/prefix/lib/cfamc/plugins/" ||
  { echo "installed host does not find the installed shipped plugins"; exit 1; }
"$host" --config "$source/run.toml" --validate || { echo "run.toml with random_sign did not validate"; exit 1; }
set +e
"$host" --config "$source/run.toml" --validate --set attack.steps=1 >/dev/null 2>&1
code=$?
set -e
[ "$code" -eq 2 ] || { echo "an unknown random_sign option gave exit code $code, expected 2"; exit 1; }
echo "ok: out-of-tree plugin built against the installed SDK and loaded by the installed host"
