#!/usr/bin/env bash
# npm run native [-- --gpu] [-- --copy]
#
# Builds the native TensorFlow backend of the trainer offline and installs it into
# node_modules/@tensorflow/tfjs-node. @tensorflow/tfjs-node's own install script would download
# a prebuilt libtensorflow 2.9 (CUDA 11) from the internet; .npmrc keeps it from running. Instead:
#   1. pip downloads the pinned TensorFlow wheel (tensorflow-cpu, or tensorflow plus the CUDA 12
#      wheels its `and-cuda` extra pins, with --gpu); the libraries in it do not link libpython,
#      so the wheel's Python tag does not matter;
#   2. the TensorFlow C library and its C headers are taken out of the wheel into deps/;
#   3. node-gyp builds the binding (binding/*.cc) against them and the local Node headers.
# The result is cached in $KUBETUNE_CACHE_DIR/native/<key> (default ~/.cache/kubetune), keyed by
# every version that goes into it, so later runs and CI only link it. Nothing downloads at run
# time: the binding finds the libraries through its rpath ($ORIGIN/../../deps/lib), and the GPU
# build's TensorFlow finds the CUDA libraries through its own ($ORIGIN/../nvidia/*/lib).
#
# --gpu   the CUDA 12 build (about 3.3 GB of wheels; the host needs only the NVIDIA driver)
# --copy  copy the build into node_modules instead of linking it (for container images)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=native-versions.env
source "$here/native-versions.env"

flavor=cpu
install_mode=link
for arg in "$@"; do
  case "$arg" in
    --gpu) flavor=gpu ;;
    --copy) install_mode=copy ;;
    -h|--help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "native: unknown option $arg (use --gpu, --copy)" >&2; exit 2 ;;
  esac
done

log() { echo "native: $*" >&2; }
die() { echo "native: error: $*" >&2; exit 1; }

package_dir="$root/node_modules/@tensorflow/tfjs-node"
[ -f "$package_dir/package.json" ] || die "$package_dir is missing; run npm ci first."
installed_version="$(node -p "require('$package_dir/package.json').version")"
[ "$installed_version" = "$TFJS_NODE_VERSION" ] \
  || die "node_modules has @tensorflow/tfjs-node $installed_version, scripts/native-versions.env pins $TFJS_NODE_VERSION; align them."

if [ "$flavor" = gpu ]; then wheel_name=tensorflow; else wheel_name=tensorflow-cpu; fi
arch="$(uname -m)"
[ "$(uname -s)" = Linux ] && [ "$arch" = x86_64 ] \
  || die "only Linux x86_64 is supported (TensorFlow publishes its C library in the Linux wheels); this is $(uname -s) $arch. The trainer still runs on wasm."
key="tfjs-node-$TFJS_NODE_VERSION-$wheel_name-$TENSORFLOW_VERSION-napi$NAPI_VERSION-linux-x64"
# The GPU build is also keyed by the CUDA wheels it holds.
if [ "$flavor" = gpu ]; then key="$key-cuda-$(echo "$CUDA_WHEELS" | tr -s ' \n' '  ' | sha256sum | cut -c1-10)"; fi
cache="${KUBETUNE_CACHE_DIR:-$HOME/.cache/kubetune}/native"
build="$cache/$key"
wheels="$cache/wheels"

find_node_gyp() {
  local npm_root
  npm_root="$(dirname "$(readlink -f "$(command -v npm)")")/.."
  for candidate in "$npm_root/node_modules/node-gyp/bin/node-gyp.js" "$(npm root -g 2>/dev/null)/npm/node_modules/node-gyp/bin/node-gyp.js"; do
    if [ -f "$candidate" ]; then echo "$candidate"; return 0; fi
  done
  return 1
}

check_tools() {
  local python="${PYTHON_FOR_PIP:-python3}"
  command -v "$python" >/dev/null 2>&1 || die "python3 is not on PATH; it is needed (with pip) to download the TensorFlow wheel. Install python3 and python3-pip."
  "$python" -m pip --version >/dev/null 2>&1 || die "pip is missing ($python -m pip failed); install python3-pip."
  command -v g++ >/dev/null 2>&1 || die "g++ is not on PATH; the binding is C++ (install g++ and make, e.g. Debian's build-essential)."
  command -v make >/dev/null 2>&1 || die "make is not on PATH; install make (e.g. Debian's build-essential)."
  node_gyp="$(find_node_gyp)" || die "node-gyp was not found next to npm; install npm with its bundled node-gyp."
  node_headers="$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")"
  [ -f "$node_headers/include/node/node_api.h" ] \
    || die "Node's headers are not in $node_headers/include/node; install Node from a release that ships them (node-gyp would otherwise download them)."
}

# pip_download SPEC... -- the wheels for manylinux x86_64 into $wheels (pip skips what is there).
pip_download() {
  "${PYTHON_FOR_PIP:-python3}" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 -d "$wheels" "$@" >&2
}

# extract WHEEL DEST PATTERN... -- members matching a regex, with the leading folder rewritten by the
# PATTERN's replacement (python re.sub), into DEST.
extract() {
  "${PYTHON_FOR_PIP:-python3}" - "$@" <<'PYTHON'
import os, re, shutil, sys, zipfile
wheel, dest, rules = sys.argv[1], sys.argv[2], sys.argv[3:]
pairs = list(zip(rules[0::2], rules[1::2]))
count = 0
with zipfile.ZipFile(wheel) as archive:
    for member in archive.infolist():
        if member.is_dir():
            continue
        for pattern, replacement in pairs:
            if re.fullmatch(pattern, member.filename):
                target = os.path.join(dest, re.sub(pattern, replacement, member.filename))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with archive.open(member) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                os.chmod(target, 0o755 if ".so" in target else 0o644)
                count += 1
                break
print(count)
PYTHON
}

build_native() {
  check_tools
  local work="$build.tmp" started=$SECONDS
  rm -rf "$work"
  mkdir -p "$work/deps/lib" "$work/deps/include" "$wheels"

  log "downloading $wheel_name==$TENSORFLOW_VERSION with pip (first run only)"
  pip_download "$wheel_name==$TENSORFLOW_VERSION"
  local wheel
  wheel="$(ls "$wheels"/"${wheel_name//-/_}"-"$TENSORFLOW_VERSION"-*.whl | head -n 1)"
  [ -f "$wheel" ] || die "pip did not leave a $wheel_name wheel in $wheels"

  log "taking the TensorFlow C library and headers out of $(basename "$wheel")"
  local libraries headers
  libraries="$(extract "$wheel" "$work/deps/lib" 'tensorflow/(libtensorflow_cc\.so\.2|libtensorflow_framework\.so\.2)' '\1')"
  [ "$libraries" = 2 ] || die "the wheel does not hold libtensorflow_cc.so.2 and libtensorflow_framework.so.2 (found $libraries)"
  headers="$(extract "$wheel" "$work/deps/include" \
    'tensorflow/include/(tensorflow/c/.*\.h)' '\1' \
    'tensorflow/include/(tensorflow/core/platform/ctstring.*\.h)' '\1' \
    'tensorflow/include/(tsl/platform/ctstring.*\.h)' '\1' \
    'tensorflow/include/(xla/tsl/c/.*\.h)' '\1')"
  log "$headers headers"
  ln -s libtensorflow_cc.so.2 "$work/deps/lib/libtensorflow.so"
  ln -s libtensorflow_framework.so.2 "$work/deps/lib/libtensorflow_framework.so"

  if [ "$flavor" = gpu ]; then
    local requirements
    requirements="$(echo "$CUDA_WHEELS" | tr -s ' \n' '\n\n')"
    log "downloading the CUDA 12 wheels: $(echo "$requirements" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    pip_download $requirements
    local requirement name version file
    for requirement in $requirements; do
      name="${requirement%%==*}"; version="${requirement##*==}"
      file="$(ls "$wheels"/"${name//-/_}"-"$version"-*.whl | head -n 1)"
      [ -f "$file" ] || die "pip did not leave a $requirement wheel in $wheels"
      # nvidia/<component>/lib/* lands in deps/nvidia/<component>/lib, where TensorFlow's rpath
      # ($ORIGIN/../nvidia/*/lib, from deps/lib) looks for it.
      extract "$file" "$work/deps" '(nvidia/[^/]+/lib/[^/]+)' '\1' >/dev/null
    done
  fi

  log "building the binding with node-gyp against Node $(node --version) headers"
  cp -R "$package_dir/binding" "$package_dir/binding.gyp" "$package_dir/package.json" "$work/"
  (
    cd "$work"
    node "$node_gyp" rebuild --nodedir="$node_headers" --napi_build_version="$NAPI_VERSION" \
      --module_name=tfjs_binding --module_path=../lib/napi-v"$NAPI_VERSION" >"$work/node-gyp.log" 2>&1
  ) || { tail -n 30 "$work/node-gyp.log" >&2; die "node-gyp failed; full log in $work/node-gyp.log"; }
  [ -f "$work/lib/napi-v$NAPI_VERSION/tfjs_binding.node" ] || die "node-gyp finished but left no tfjs_binding.node"
  rm -rf "$work/build" "$work/binding" "$work/binding.gyp" "$work/package.json"

  cat >"$work/deps/kubetune-native.json" <<JSON
{"flavor": "$flavor", "tensorflow": "$wheel_name==$TENSORFLOW_VERSION", "tfjsNode": "$TFJS_NODE_VERSION", "napi": $NAPI_VERSION, "node": "$(node --version)"}
JSON
  rm -rf "$build"
  mv "$work" "$build"
  log "built $key in $((SECONDS - started))s"
}

if [ -f "$build/deps/kubetune-native.json" ] && [ -f "$build/lib/napi-v$NAPI_VERSION/tfjs_binding.node" ]; then
  log "using the cached build $build"
else
  build_native
fi

for part in deps lib; do
  rm -rf "${package_dir:?}/$part"
  if [ "$install_mode" = copy ]; then cp -R "$build/$part" "$package_dir/$part"; else ln -s "$build/$part" "$package_dir/$part"; fi
done

# The proof that it works: the binding loads and TensorFlow computes.
node -e "
  const tf = require('$package_dir');
  const product = tf.matMul(tf.ones([2, 2]), tf.ones([2, 2])).dataSync();
  if (tf.getBackend() !== 'tensorflow' || product[0] !== 2) { console.error('native: error: the binding loaded but did not compute'); process.exit(1); }
" 2>/dev/null || die "the installed binding does not load; remove $build and run again"
log "installed the $flavor build ($wheel_name $TENSORFLOW_VERSION) into node_modules/@tensorflow/tfjs-node by $install_mode"
