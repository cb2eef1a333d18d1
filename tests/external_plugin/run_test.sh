#!/usr/bin/env bash
# Installs cfamc into a temporary prefix and checks what a plugin author gets there: the example plugins of
# docs/plugin-guide.md (share/cfamc/examples), built as separate CMake projects against that installed SDK
# (the C one with no LibTorch at all) and installed by their install rule; the installed host finds them
# without CFAMC_PLUGIN_PATH, validates and trains with them. Then the installed tree's run-time paths name
# nothing of the build tree, and the whole prefix still works after being moved.
# Arguments: the cfamc build directory, this folder, and the CMAKE_PREFIX_PATH that found LibTorch.
set -euo pipefail
build=$(realpath "$1") source=$2 torch_prefix=$3
work="$build/external_plugin_test"   # a fixed place, so ccache recognises the compiles next time
rm -rf "$work"
mkdir -p "$work"
prefix="$work/prefix"
fail() { echo "FAIL: $*"; exit 1; }

cmake --install "$build" --prefix "$prefix" >/dev/null
examples="$prefix/share/cfamc/examples"
[ -f "$examples/random_sign/random_sign.cpp" ] && [ -f "$examples/c_random_sign/c_random_sign.c" ] ||
  fail "the guide's examples are not installed in share/cfamc/examples"
[ -f "$prefix/include/cfamc/third_party/dlpack/dlpack.h" ] || fail "dlpack.h is not installed with the SDK"

# Builds and installs the example $1 against the installed SDK, with CMAKE_PREFIX_PATH $2.
build_example() {
  local name=$1 prefix_path=$2 dir="$work/build-$1"
  export CCACHE_BASEDIR="$work"
  cmake -S "$examples/$name" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
    -DCMAKE_PREFIX_PATH="$prefix_path" >"$dir.configure.log" 2>&1 || { cat "$dir.configure.log"; fail "configure $name"; }
  cmake --build "$dir" >"$dir.build.log" 2>&1 || { cat "$dir.build.log"; fail "build $name"; }
  cmake --install "$dir" >"$dir.install.log" 2>&1 || { cat "$dir.install.log"; fail "install $name"; }
}
# The C++ example finds LibTorch through a link inside the cfamc prefix, so its install rule has to write a
# run-time path relative to the plugin ($ORIGIN/...) that still holds once the prefix moves (the host and
# the shipped plugins, whose LibTorch lies outside, get the absolute path).
torch_for_plugins=$torch_prefix
IFS=';' read -ra roots <<<"$torch_prefix"
for root in "${roots[@]}"; do
  if [ -f "$root/share/cmake/Torch/TorchConfig.cmake" ]; then
    ln -s "$(realpath "$root")" "$prefix/libtorch"
    torch_for_plugins="$prefix/libtorch"
  fi
done
build_example random_sign "$prefix;$torch_for_plugins"
if [ "$torch_for_plugins" = "$prefix/libtorch" ]; then
  runpath=$(readelf -d "$prefix/lib/cfamc/plugins/librandom_sign.so" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p')
  [ "$runpath" = '$ORIGIN/../../../libtorch/lib' ] ||
    fail "random_sign, with LibTorch inside the prefix, has run-time path '$runpath', not \$ORIGIN/../../../libtorch/lib"
fi
build_example c_random_sign "$prefix"   # plain C: the installed SDK alone, no LibTorch

host="$prefix/bin/cfamc-host"
unset CFAMC_PLUGIN_PATH
list=$("$host" --list-plugins --json)
for name in random_sign c_random_sign pgd; do
  echo "$list" | grep -q "\"file\": \"$prefix/lib/cfamc/plugins/lib\(cfamc_\)\?$name.so\"" ||
    fail "the installed host does not find $name in $prefix/lib/cfamc/plugins"
done
echo "$list" | grep -q '"skipped": \[\]' || fail "the installed host skipped plugin files: $list"

"$host" --config "$examples/random_sign/run.toml" --validate >/dev/null || fail "run.toml with random_sign did not validate"
set +e
"$host" --config "$examples/random_sign/run.toml" --validate --set attack.steps=1 >/dev/null 2>&1
code=$?
set -e
[ "$code" -eq 2 ] || fail "an unknown random_sign option gave exit code $code, expected 2"
"$host" --config "$source/train_c.toml" --set run.dir="$work/run" --until-step 1 >"$work/run.log" 2>&1 ||
  { cat "$work/run.log"; fail "a training step with the plain-C attack failed"; }

# Run-time paths of everything installed: no build tree, no duplicates, nothing that does not exist.
for file in "$host" "$prefix"/lib/cfamc/plugins/*.so; do
  runpath=$(readelf -d "$file" | sed -n 's/.*(R\(UN\)\?PATH).*\[\(.*\)\]/\2/p')
  [ -z "$runpath" ] && continue
  IFS=: read -ra entries <<<"$runpath"
  [ "$(printf '%s\n' "${entries[@]}" | sort | uniq -d)" = "" ] || fail "$file: duplicate run-time path entries: $runpath"
  for entry in "${entries[@]}"; do
    case "$entry" in
      '$ORIGIN'*) resolved="$(dirname "$file")${entry#\$ORIGIN}" ;;
      /*) resolved=$entry ;;
      *) fail "$file: run-time path entry '$entry' is neither absolute nor \$ORIGIN-relative" ;;
    esac
    case "$(realpath -m "$resolved")/" in "$build"/* | "$work"/build-*) fail "$file: run-time path names a build tree: $entry" ;; esac
    [ -d "$resolved" ] || fail "$file: run-time path entry '$entry' does not exist"
  done
done

# The installed tree is relocatable: moved whole, the host still starts and finds its plugins beside it.
moved="$work/moved"
mv "$prefix" "$moved"
"$moved/bin/cfamc-host" --version >/dev/null || fail "the moved host does not start"
list=$("$moved/bin/cfamc-host" --list-plugins --json)
for name in random_sign c_random_sign pgd convnet; do
  echo "$list" | grep -q "\"file\": \"$moved/lib/cfamc/plugins/lib\(cfamc_\)\?$name.so\"" ||
    fail "the moved host does not find $name beside itself"
done
echo "ok: the installed examples build against the installed SDK, install where the host finds them, and run;" \
  "run-time paths are clean and the installed tree is relocatable"
