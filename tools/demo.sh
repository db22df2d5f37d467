#!/usr/bin/env bash
# demo.sh — the main job (README quickstart): the local cluster demo,
# tools/cluster-demo.sh — setup and build, demo models, `modserve up`, a
# request about the sample image, a mixed workload with its latency report,
# `modserve status`, `modserve down` (always). Arguments and environment
# (LAYOUT, MS_BUILD_DIR, MS_RUN_DIR, MS_SKIP_SETUP) pass through.
set -euo pipefail
exec "$(dirname "$0")/cluster-demo.sh" "$@"
