#!/usr/bin/env bash
# Fuzz the C datapath under AddressSanitizer + UBSan: a throw-away copy of the
# checkout gets an instrumented slirp._native, then the hypothesis parity
# fuzzer (tests/unit/test_datapath_fuzz.py) and the parity tests run on it.
#   tools/asan_fuzz.sh [EXAMPLES]     (default 2000)
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-/opt/slirpnet-venv/bin/python}
WORK=$(mktemp -d /tmp/slirpnet-asan.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cp -a "$SRC/." "$WORK/"
rm -f "$WORK"/slirp/_native*.so
cd "$WORK"
SLIRPNET_CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" "$PY" native/build.py
export LD_PRELOAD=$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export SLIRPNET_FUZZ_EXAMPLES=${1:-2000}
"$PY" -m pytest -q -p no:cacheprovider tests/unit/test_datapath_fuzz.py tests/unit/test_datapath_parity.py tests/unit/test_datapath_netstack.py \
  tests/unit/test_datapath_thread.py
