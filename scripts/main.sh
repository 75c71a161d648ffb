#!/usr/bin/env bash
# The main job: replay the authors' bundled GSM8K logs (tables, R², figure and JSON under runs/replay/).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
OUT="${1:-runs/replay}"
mkdir -p "$OUT"
premem replay examples/paper-logs/gsm8k --plot "$OUT/gsm8k_premem_vs_test.png" | tee "$OUT/replay.txt"
premem replay examples/paper-logs/gsm8k --json > "$OUT/replay.json"
echo "written: $OUT/replay.txt, $OUT/replay.json, $OUT/gsm8k_premem_vs_test.png"
