#!/usr/bin/env bash
# setup.sh — installs the Debian packages modserve needs to build and test, then
# configures and builds it. Idempotent: packages already present are not
# reinstalled, an existing build directory is reused.
#
#   tools/setup.sh [BUILD_DIR] [extra cmake args...]     (default BUILD_DIR: build)
#   tools/setup.sh --deps-only                            (packages only: compose/Dockerfile)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake pkg-config clang libclang-rt-14-dev
  libturbojpeg0-dev libjpeg62-turbo-dev libpng-dev libwebp-dev libcjson-dev
  libzmq3-dev libczmq-dev libmsgpack-dev libhiredis-dev redis-server
  libcriterion-dev libmicrohttpd-dev libcurl4-openssl-dev zlib1g-dev
  docker-compose python3-yaml   # the compose_config test: compose/check.sh
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "${1:-}" = "--deps-only" ]; then exit 0; fi

BUILD_DIR=${1:-build}
shift || true
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
