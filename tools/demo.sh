#!/usr/bin/env bash
# demo.sh — the main job: sets up and builds modserve, generates the demo model
# (seeded, into models/), and answers a question about the bundled sample image.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh build
[ -f models/demo-lm.gguf ] && [ -f models/demo-mmproj.gguf ] ||
  build/bin/modserve-mkmodel --preset demo --out models
build/bin/modserve-run -m models/demo-lm.gguf --mmproj models/demo-mmproj.gguf \
  --image tests/data/images/sample.jpg -p "Describe this image." -n 48 --seed 1
