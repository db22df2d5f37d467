#!/usr/bin/env bash
# cluster-demo.sh — the main job: sets up and builds modserve, generates the demo
# models (seeded, into models/), brings up a local cluster (redis-server, the
# broker, image encoders and text instances: tools/clusters/modserve.conf),
# answers a question about the bundled sample image, plays a short mixed
# image/text workload and prints its latency report (and checks every answer
# against the in-process engine), shows the registry, and shuts the cluster
# down — always, also when a step fails. Exit status: non-zero on any failure.
#
#   tools/cluster-demo.sh                    layout modserve
#   LAYOUT=disagg tools/cluster-demo.sh      or monolith (tools/clusters/*.conf)
#   MS_BUILD_DIR=build-x MS_SKIP_SETUP=1 ... an existing build, no apt/cmake step
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${MS_BUILD_DIR:-build}
LAYOUT=${LAYOUT:-modserve}
RUN=${MS_RUN_DIR:-run/demo}
MS="$BUILD/bin/modserve"

[ -n "${MS_SKIP_SETUP:-}" ] || tools/setup.sh "$BUILD"
[ -f models/demo-lm.gguf ] && [ -f models/demo-mmproj.gguf ] ||
  "$BUILD/bin/modserve-mkmodel" --preset demo --out models

teardown() {
  rc=$?
  "$MS" down --dir "$RUN" || rc=1
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

echo "== modserve up (layout $LAYOUT)"
"$MS" up --dir "$RUN" --layout "$LAYOUT" --model models/demo-lm.gguf \
  --mmproj models/demo-mmproj.gguf --port-base auto
echo "== modserve submit"
"$MS" submit --dir "$RUN" --image tests/data/images/sample.jpg -p "Describe this image." \
  -n 48 --seed 1
echo "== modserve play"
"$MS" play --dir "$RUN" --requests 24 --image-ratio 0.5 --concurrency 4 --seed 1 --verify
echo "== modserve status"
"$MS" status --dir "$RUN"
echo "== modserve down"
