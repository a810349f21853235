#!/usr/bin/env bash
# scripts/python-env.sh [--check] [REQUIREMENTS_FILE...]
#
# Makes the Python environment of the PyTorch references (bench/reference_lora.py) and prints
# its interpreter's path on stdout; progress and errors go to stderr. Run it once before
# `npm run bench`, which finds the environment by itself (or takes $PYTHON).
#
# The venv lives in $KUBETUNE_CACHE_DIR/python (default ~/.cache/kubetune/python), keyed by the
# Python version and the contents of the requirement files, and is reused while neither changes.
# The files (default scripts/python-requirements.txt) are lock files: every package pinned with
# all its dependencies, installed with --no-deps (see that file for why). A later reference that
# needs more packages names its own file after the default one, and gets a venv of its own.
#
# --check   print the interpreter's path if the venv is ready, else exit 1; never installs
# PYTHON_FOR_VENV   the interpreter the venv is made from (default python3; 3.11 or newer)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
check_only=false
files=()
for arg in "$@"; do
  case "$arg" in
    --check) check_only=true ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "python-env: unknown option $arg (use --check)" >&2; exit 2 ;;
    *) files+=("$arg") ;;
  esac
done
[ "${#files[@]}" -gt 0 ] || files=("$here/python-requirements.txt")

log() { echo "python-env: $*" >&2; }
die() { echo "python-env: error: $*" >&2; exit 1; }

for file in "${files[@]}"; do [ -f "$file" ] || die "no requirements file $file"; done
base="${PYTHON_FOR_VENV:-python3}"
command -v "$base" >/dev/null 2>&1 || die "$base is not on PATH; install Python 3.11 or newer, or set PYTHON_FOR_VENV."
version="$("$base" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
"$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$base is Python $version; torch 2.15 needs 3.11 or newer (set PYTHON_FOR_VENV)."

torch_version="$(sed -nE 's/^torch==([^ ;#]+).*/\1/p' "${files[@]}" | head -n 1)"
hash="$({ echo "$version"; cat "${files[@]}"; } | sha256sum | cut -c1-10)"
venv="${KUBETUNE_CACHE_DIR:-$HOME/.cache/kubetune}/python/venv-torch-${torch_version:-none}-py$version-$hash"
python="$venv/bin/python"
# Written last, so a venv whose install was interrupted is never taken for a ready one.
ready="$venv/.kubetune-ready"

if [ -f "$ready" ]; then echo "$python"; exit 0; fi
$check_only && { log "no ready venv at $venv; run scripts/python-env.sh to make it"; exit 1; }

rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
log "making $venv from $base (Python $version); first run only, about 3 GB of wheels"
"$base" -m venv "$venv" || die "$base -m venv failed; install the venv module (Debian: python3-venv)."
started=$SECONDS
requirements=()
for file in "${files[@]}"; do requirements+=(-r "$file"); done
"$python" -m pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: "${requirements[@]}" >&2 \
  || die "pip install failed (see above); the half-made venv at $venv is redone on the next run."
"$python" -c 'import torch; torch.randn(2, 2) @ torch.randn(2, 2)' >&2 \
  || die "torch does not import or compute in $venv (see above); a dependency is missing from ${files[*]}."
touch "$ready"
log "ready in $((SECONDS - started))s"
echo "$python"
