#!/usr/bin/env bash
# test.sh — sets up, builds and runs every test: the normal build (labels unit
# and integration; gpu tests skip themselves without a GPU), then the
# ASan+UBSan build on the unit tests.
#
#   tools/test.sh            everything
#   tools/test.sh --quick    normal build only
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=$(nproc)

tools/setup.sh build
# The gateway's end-to-end test drives it with the official `openai` client (from PyPI);
# without it that test reports itself skipped.
python3 -m pip install -q --disable-pip-version-check openai prometheus-client >/dev/null 2>&1 ||
  echo "test.sh: could not pip-install openai; the gateway's client test will be skipped"
(cd build && ctest --output-on-failure -j"$JOBS")

if [ "${1:-}" != "--quick" ]; then
  tools/setup.sh build-asan -DMS_SANITIZE=ON -DMS_CUDA=OFF
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
     LSAN_OPTIONS=suppressions="$ROOT/tests/lsan.supp" \
     ctest --output-on-failure -j"$JOBS" -L unit)
fi
echo "test.sh: all tests passed"
