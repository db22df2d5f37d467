#!/bin/sh
# entrypoint.sh — the container entry point of the modserve images
# (compose/Dockerfile, compose/Dockerfile.cuda; docs/deploy.md).
#
#   entrypoint.sh models              generate the preset models into $MS_MODELS if missing
#   entrypoint.sh broker  [ARGS...]   modserve-broker  with the settings below (+ ARGS)
#   entrypoint.sh actor   [ARGS...]   modserve-actor   (needs MS_STAGES)
#   entrypoint.sh gateway [ARGS...]   modserve-gateway
#   entrypoint.sh COMMAND [ARGS...]   anything else runs as is (modserve status --redis ..., sh)
#
# Settings (environment; defaults in brackets):
#   MS_MODELS [/models]  folder of the GGUF files (a volume)
#   MS_PRESET [demo]     `modserve-mkmodel --preset` generated into MS_MODELS when the files
#                        are missing (deterministic: every container gets the same bytes);
#                        empty: never generate, the files must be there
#   MS_LM [$MS_MODELS/$MS_PRESET-lm.gguf], MS_MMPROJ [$MS_MODELS/$MS_PRESET-mmproj.gguf;
#                        "none": a text-only cluster]
#   MS_REDIS [redis:6379], MS_PREFIX [ms]            the registry
#   MS_BROKER_FRONT [tcp://broker:5555]               producers (the gateway) connect here
#   MS_BROKER_BACK  [tcp://broker:5556]               actors connect here
#   broker:  MS_LAYOUT [modserve], MS_PROFILE [none],
#            MS_FRONT_BIND [tcp://0.0.0.0:5555], MS_BACK_BIND [tcp://0.0.0.0:5556]
#   actor:   MS_STAGES (encode | prefill | decode | prefill+decode | encode+prefill+decode),
#            MS_ACTOR_ID [$MS_ID_PREFIX-$(uname -n)], MS_ID_PREFIX [actor],
#            MS_DATA_PORT [7500], MS_DATA_HOST [0.0.0.0] (the data plane's bind address),
#            MS_ADVERTISE [this container's address] (what peers connect to: a pod IP),
#            MS_THREADS [0 = one per core], MS_KV_TOKENS, MS_VIT_BATCH [engine defaults]
#   gateway: MS_LISTEN [0.0.0.0:8000], MS_MODEL_NAME [$MS_PRESET, else "modserve"],
#            MS_REQUIRE_STAGES [encode,prefill,decode; prefill,decode without mmproj]
set -eu

BIN=${MS_BIN:-/opt/modserve/bin}
MODELS=${MS_MODELS:-/models}
PRESET=${MS_PRESET-demo}
LM=${MS_LM:-$MODELS/${PRESET:-model}-lm.gguf}
MMPROJ=${MS_MMPROJ:-$MODELS/${PRESET:-model}-mmproj.gguf}
REDIS=${MS_REDIS:-redis:6379}
PREFIX=${MS_PREFIX:-ms}
FRONT=${MS_BROKER_FRONT:-tcp://broker:5555}
BACK=${MS_BROKER_BACK:-tcp://broker:5556}

log() { echo "entrypoint: $*" >&2; }

# Generates the preset models once per volume (a lock: several containers may start together).
ensure_models() {
  if [ -f "$LM" ] && { [ "$MMPROJ" = none ] || [ -f "$MMPROJ" ]; }; then return 0; fi
  if [ -z "$PRESET" ]; then
    log "model files missing ($LM, $MMPROJ) and MS_PRESET is empty: mount them into $MODELS"
    exit 1
  fi
  mkdir -p "$MODELS"
  (
    flock 9
    if [ ! -f "$MODELS/$PRESET-lm.gguf" ] || [ ! -f "$MODELS/$PRESET-mmproj.gguf" ]; then
      tmp=$(mktemp -d "$MODELS/.mkmodel.XXXXXX")
      log "generating the $PRESET models into $MODELS"
      "$BIN/modserve-mkmodel" --preset "$PRESET" --out "$tmp" >&2
      mv "$tmp/$PRESET-lm.gguf" "$tmp/$PRESET-mmproj.gguf" "$MODELS/"
      rmdir "$tmp"
    fi
  ) 9>"$MODELS/.mkmodel.lock"
  if [ ! -f "$LM" ]; then log "no text model at $LM"; exit 1; fi
}

# This container's address as peers see it: MS_ADVERTISE, else what its name resolves to.
advertise() {
  if [ -n "${MS_ADVERTISE:-}" ]; then echo "$MS_ADVERTISE"; return; fi
  addr=$(getent hosts "$(uname -n)" | awk '{print $1; exit}')
  if [ -z "$addr" ]; then
    log "cannot find this container's address: set MS_ADVERTISE"
    exit 1
  fi
  echo "$addr"
}

role=${1:-}
[ $# -gt 0 ] && shift
case "$role" in
models)
  ensure_models
  log "models ready: $LM${MMPROJ:+ $MMPROJ}"
  ;;
broker)
  ensure_models
  set -- --front "${MS_FRONT_BIND:-tcp://0.0.0.0:5555}" --back "${MS_BACK_BIND:-tcp://0.0.0.0:5556}" \
    --redis "$REDIS" \
    --prefix "$PREFIX" --layout "${MS_LAYOUT:-modserve}" --model "$LM" "$@"
  [ "$MMPROJ" != none ] && set -- "$@" --mmproj "$MMPROJ"
  [ -n "${MS_PROFILE:-}" ] && set -- "$@" --profile "$MS_PROFILE"
  exec "$BIN/modserve-broker" "$@"
  ;;
actor)
  ensure_models
  if [ -z "${MS_STAGES:-}" ]; then log "actor: set MS_STAGES"; exit 1; fi
  id=${MS_ACTOR_ID:-${MS_ID_PREFIX:-actor}-$(uname -n)}
  adv=$(advertise) # (an assignment: set -e stops here when it fails)
  set -- --id "$id" --stages "$MS_STAGES" --broker "$BACK" \
    --data "tcp://${MS_DATA_HOST:-0.0.0.0}:${MS_DATA_PORT:-7500}" --advertise "$adv" \
    --redis "$REDIS" --prefix "$PREFIX" --model "$LM" --threads "${MS_THREADS:-0}" "$@"
  # encoders run the ViT, prefill actors the projector: both need the mmproj
  case "$MS_STAGES" in
  *encode* | *prefill*) [ "$MMPROJ" != none ] && set -- "$@" --mmproj "$MMPROJ" ;;
  esac
  [ -n "${MS_KV_TOKENS:-}" ] && set -- "$@" --kv-tokens "$MS_KV_TOKENS"
  [ -n "${MS_VIT_BATCH:-}" ] && set -- "$@" --vit-batch "$MS_VIT_BATCH"
  exec "$BIN/modserve-actor" "$@"
  ;;
gateway)
  stages=${MS_REQUIRE_STAGES:-encode,prefill,decode}
  [ "$MMPROJ" = none ] && [ -z "${MS_REQUIRE_STAGES:-}" ] && stages=prefill,decode
  exec "$BIN/modserve-gateway" --model-name "${MS_MODEL_NAME:-${PRESET:-modserve}}" \
    --listen "${MS_LISTEN:-0.0.0.0:8000}" --broker "$FRONT" --redis "$REDIS" \
    --prefix "$PREFIX" --require-stages "$stages" "$@"
  ;;
"")
  log "usage: entrypoint.sh models|broker|actor|gateway [ARGS...] | COMMAND [ARGS...]"
  exit 2
  ;;
*)
  exec "$role" "$@"
  ;;
esac
