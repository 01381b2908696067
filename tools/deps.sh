#!/usr/bin/env bash
# deps.sh: install the Debian packages weft needs that are missing, and find
# the CUDA toolkit.  Called by `make deps` (and so by make, make test, make demo).
#   tools/deps.sh [EXTRA-PACKAGE...]     e.g. the fuzzer's runtime for `make fuzz`
# Installs only as root; otherwise names what is missing and fails.
set -euo pipefail

packages=(
  build-essential pkg-config
  libxml2-dev libxml2-utils     # model files: parser, RelaxNG validation
  libgraphviz-dev graphviz      # weft dot: cgraph, gvc; dot for the tests
  libopenmpi-dev openmpi-bin    # weft run: one process per rank
  libopenblas-dev               # CPU GEMMs
  libcmocka-dev                 # the test framework
  libcairo2-dev fonts-dejavu-core  # weft plot: SVG and PNG from one drawing, its text's font
  "$@"
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing Debian packages: ${missing[*]}" >&2
    echo "deps: run 'make deps' as root, or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The package lists may be absent or stale on a fresh machine.
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "deps: installed ${#missing[@]} package(s)"
fi

cuda=${CUDA_HOME:-/usr/local/cuda}
if [ -f "$cuda/include/nvrtc.h" ]; then
  libs=""
  for l in nvrtc cublas nccl; do
    ls "$cuda"/lib64/lib$l.so* >/dev/null 2>&1 && libs="$libs $l"
  done
  echo "deps: Debian packages present; CUDA toolkit at $cuda (found:$libs)" >&2
else
  echo "deps: Debian packages present; no CUDA toolkit at $cuda (set CUDA_HOME): GPU parts are not built" >&2
fi
