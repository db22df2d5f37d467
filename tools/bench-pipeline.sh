#!/usr/bin/env bash
# bench-pipeline.sh — the pipeline benchmarks (docs/pipeline-benchmarks.md):
#   1. data-plane transfer bandwidth (feature / KV pulls) over tcp and ipc as a
#      ratio of memcpy bandwidth measured in the same run
#      (build/bin/modserve-bench-transfer);
#   2. broker overhead per request and the requests/s a local cluster sustains
#      with the tiny model, against the in-process engine measured in the same
#      run (build/bin/modserve-bench-broker, which starts and stops its own
#      redis-server + broker + actors in OUT/run).
#
#   tools/bench-pipeline.sh [options]
#     --build DIR        build directory (default: build; the tools are built if missing)
#     --out DIR          results: transfer.{txt,json}, broker.{txt,json}, summary.txt
#                        and the cluster's run directory (logs) in DIR/run
#                        (default: out/bench-pipeline)
#     --layout L         cluster layout for the broker benchmark: modserve (default),
#                        monolith or disagg
#     --data tcp|ipc     the actors' data plane (default tcp)
#     --threads N        compute threads per actor and in process (default 1)
#     --requests N       sequential requests per kind (default 200)
#     --level-s S        seconds per concurrency / arrival-rate level (default 3)
#     --quick            a short run: 50 requests, 1 s levels, fewer transfer sizes
#     --transfer-only | --broker-only
#
# Every process the benchmarks start is stopped when they end, fail or are
# interrupted (^C, SIGTERM); if a benchmark itself dies, `modserve down
# --force --dir OUT/run` is run here as a last resort.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=build OUT=out/bench-pipeline LAYOUT=modserve DATA=tcp THREADS=1 REQUESTS=200 LEVEL_S=3
SIZES=64K,256K,1M,4M,16M,64M,256M DO_TRANSFER=1 DO_BROKER=1
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$2; shift ;;
    --out) OUT=$2; shift ;;
    --layout) LAYOUT=$2; shift ;;
    --data) DATA=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --requests) REQUESTS=$2; shift ;;
    --level-s) LEVEL_S=$2; shift ;;
    --quick) REQUESTS=50 LEVEL_S=1 SIZES=64K,1M,16M,64M ;;
    --transfer-only) DO_BROKER=0 ;;
    --broker-only) DO_TRANSFER=0 ;;
    -h|--help) sed -n '2,27p' "$0" | cut -c3-; exit 0 ;;
    *) echo "bench-pipeline: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

BIN=$BUILD/bin
NEED=(modserve modserve-broker modserve-actor modserve-mkmodel modserve-bench-transfer
      modserve-bench-broker)
for t in "${NEED[@]}"; do
  if [ ! -x "$BIN/$t" ]; then
    echo "bench-pipeline: building ${NEED[*]} in $BUILD" >&2
    cmake -S . -B "$BUILD" >/dev/null
    cmake --build "$BUILD" -j2 --target "${NEED[@]}"
    break
  fi
done

mkdir -p "$OUT"
RUN=$OUT/run
CHILD=""

# Stops the running benchmark (it stops its cluster), then anything left.
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [ -n "$CHILD" ] && kill -0 "$CHILD" 2>/dev/null; then
    kill -TERM "$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  if compgen -G "$RUN/pids/*.pid" >/dev/null; then
    echo "bench-pipeline: stopping what is left in $RUN" >&2
    "$BIN/modserve" down --force --dir "$RUN" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# Runs a benchmark in the background (so a signal reaches the trap at once),
# its stdout shown and copied into a file. Returns its exit status.
run_bench() {
  local out=$1 fd tee_pid rc=0
  shift
  exec {fd}> >(tee "$out")
  tee_pid=$!
  "$@" >&"$fd" &
  CHILD=$!
  exec {fd}>&- # tee ends when the benchmark closes its copy
  wait "$CHILD" || rc=$?
  CHILD=""
  wait "$tee_pid" 2>/dev/null || true
  return "$rc"
}

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
{
  echo "bench-pipeline: $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n), ${cpu:-?}, $(nproc) cpus"
  echo "load average before: $LOAD_BEFORE"
} | tee "$OUT/summary.txt"

rc=0
if [ "$DO_TRANSFER" = 1 ]; then
  echo "bench-pipeline: transfer bandwidth (about 15 s)" >&2
  run_bench "$OUT/transfer.txt" "$BIN/modserve-bench-transfer" --sizes "$SIZES" \
    --json "$OUT/transfer.json" || rc=$?
fi
if [ "$rc" = 0 ] && [ "$DO_BROKER" = 1 ]; then
  echo "bench-pipeline: broker overhead and requests/s (about 2 minutes)" >&2
  rm -rf "$RUN"
  run_bench "$OUT/broker.txt" "$BIN/modserve-bench-broker" --dir "$RUN" --layout "$LAYOUT" \
    --data "$DATA" --threads "$THREADS" --requests "$REQUESTS" --level-s "$LEVEL_S" \
    --json "$OUT/broker.json" || rc=$?
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
{
  [ -f "$OUT/transfer.txt" ] && [ "$DO_TRANSFER" = 1 ] && { echo; cat "$OUT/transfer.txt"; }
  [ -f "$OUT/broker.txt" ] && [ "$DO_BROKER" = 1 ] && { echo; cat "$OUT/broker.txt"; }
  echo
  echo "load average after: $LOAD_AFTER"
} >>"$OUT/summary.txt"
echo "bench-pipeline: load average before $LOAD_BEFORE, after $LOAD_AFTER;" \
     "results in $OUT/ (summary.txt, *.json)" >&2
exit "$rc"
