#!/usr/bin/env bash
# How the shipped model is made, start to finish (about 3 h on 2 CPU cores; SKIP_ABLATIONS=1: 1 h).
#   1. 40-epoch ablations on an artist-disjoint 80/20 split of ../shared/data/4q (rho, Shake-Shake,
#      frequency-aware, FALU, label-count loss weighting)
#   2. the chosen configuration trained on the same split (its validation metrics and robustness go in the card)
#   3. the same recipe on all 720 clips: the shipped weights
#   4. fp16 copy into weights/, sha256 sidecar, model card written by `musictag model-card`
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/4q/manifest.csv}
RUNS=${RUNS:-runs}
CONFIG=${CONFIG:-scripts/shipped_config.json}
mkdir -p "$RUNS"
common=(--data "$DATA" --min-count 30 --quiet)

if [ "${SKIP_ABLATIONS:-0}" != 1 ]; then
  for spec in "rho5:--rho 5" "rho7:--rho 7" "rho9:--rho 9" "rho7_fa:--rho 7 --frequency-aware" \
              "rho7_shake:--rho 7 --shake-shake" "rho7_falu:--rho 7 --activation falu" \
              "rho9_w05:--rho 9 --config scripts/label_power.json"; do
    name=${spec%%:*}; flags=${spec#*:}
    # shellcheck disable=SC2086
    musictag train "${common[@]}" --out "$RUNS/$name.pt" --epochs 40 --width 32 --n-mels 96 $flags \
      > "$RUNS/$name.log"
  done
fi

musictag train "${common[@]}" --config "$CONFIG" --out "$RUNS/split.pt" > "$RUNS/split.log"
musictag evaluate --data "$RUNS/split.pt.val.csv" --model "$RUNS/split.pt" --robustness --json --quiet \
  > "$RUNS/split.eval.json"
musictag train "${common[@]}" --config "$CONFIG" --val-fraction 0 --out "$RUNS/all.pt" > "$RUNS/all.log"

python - "$RUNS/all.pt" weights/musictag.pt <<'PY'
import sys
from musictag.checkpoint import load_checkpoint, save_checkpoint, write_sha_sidecar
save_checkpoint(load_checkpoint(sys.argv[1]), sys.argv[2], half=True)
print(write_sha_sidecar(sys.argv[2]))
PY
python bench/model_speed.py --quick > "$RUNS/model_speed.txt"
musictag model-card weights/musictag.pt --out weights/MODEL_CARD.md --evaluation "$RUNS/split.eval.json" \
  --evaluation-title "validation split, same recipe trained without those artists (runs/split.pt)" \
  --speed "$RUNS/model_speed.txt" --notes scripts/model_card_notes.md $(for f in "$RUNS"/rho*.pt "$RUNS/split.pt"; do printf -- '--ablation %s ' "$f"; done)
