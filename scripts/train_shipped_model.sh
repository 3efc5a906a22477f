#!/usr/bin/env bash
# How the shipped model is made, from nothing, on 2 CPU cores. Its parts, timed on a fresh machine on
# 2026-12-01: venvs, packages, mixtures and the teacher's outputs 20 min; the five ablations 15 min; the
# 150 training epochs about 45 min (17 s an epoch, one torch thread); checks and card a few minutes: about
# 1.5 h in all (earlier sessions' machines took up to 3.5 h).
# Run it in the background with a log; every step resumes where an interrupted run stopped:
#     nohup scripts/train_shipped_model.sh > runs/shipped.log 2>&1 &
#   1. the teacher: musicnn 0.1.0 in its own venv (scripts/teacher_env.sh)
#   2. unlabelled music: Debian's game-music packages (bench/real_music.py DISTILL_PACKAGES), and a
#      second set never trained on (SCAN_PACKAGES: the scan benchmark's library) for the checks; and
#      mixtures of two 4Q training clips (scripts/mix_clips.py): more 4Q-like music for the teacher to label;
#      the training clips themselves join the unlabelled audio too, in segments with the teacher's outputs
#      on each (no validation clip: mix_clips.py --training-list writes the training side of the split)
#   3. the teacher's outputs on the 4Q clips, both sets of Debian music and the mixtures (scripts/teacher_targets.py)
#   4. the baseline to beat: musicnn embeddings + logistic regression on the same split (bench/teacher_probe.py)
#   5. ablations (short runs): 4Q labels only; teacher targets without pseudo-labels; the full recipe
#      without regressing the teacher's embedding; distilling on the Debian music only; the full recipe
#   6. the shipped recipe on an artist-disjoint 80/20 split of ../shared/data/4q: the 20% choose the
#      written vocabulary's thresholds and give the validation metrics, so the shipped weights are this run;
#      values they cannot judge are calibrated against the teacher on Debian tracks kept out of training
#   7. fp16 copy into weights/musictag-fast.pt (`--model fast`), sha256 sidecar; teacher agreement on
#      unseen music; its model card (weights/MODEL_CARD_FAST.md)
#   8. the default model, CP-ResNet + musicnn (learn/joint_recipe.py): musicnn converted from its wheel
#      (scripts/convert_musicnn.py), both networks' frozen features of the 4Q clips
#      (scripts/joint_features.py, under 2 min), heads fitted on them with out-of-fold thresholds
#      (scripts/build_joint_model.py, a few minutes): weights/musictag.pt and weights/MODEL_CARD.md
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/4q/manifest.csv}
RUNS=${RUNS:-runs}
WORK=${WORK:-$RUNS/music}
CONFIG=${CONFIG:-scripts/shipped_config.json}
TEACHER_VENV=${TEACHER_VENV:-.teacher-venv}
ABLATION_EPOCHS=${ABLATION_EPOCHS:-10}
mkdir -p "$RUNS" "$WORK"

scripts/teacher_env.sh "$TEACHER_VENV"
packages() { python -c "import sys; sys.path.insert(0, 'bench'); import real_music; print(' '.join(real_music.$1))"; }
# shellcheck disable=SC2046
python bench/real_music.py "$WORK/unlabelled" --build-dir "$WORK" --packages $(packages DISTILL_PACKAGES) \
  --min-seconds 30 --per-package 1000 --describe "$RUNS/sources.json"
# shellcheck disable=SC2046
python bench/real_music.py "$WORK/unseen" --build-dir "$WORK" --packages $(packages SCAN_PACKAGES) \
  --min-seconds 90 --per-package 20
python -c "from musictag.learn.manifest import read_manifest; print('\n'.join(e.path for e in read_manifest('$DATA').examples))" \
  > "$WORK/labelled.txt"
# every 8th Debian track is kept out of training: on it, the written values the 4Q validation clips cannot
# judge (instruments, voice, rare genres) get their thresholds against the teacher. Whole tracks of the
# same packages (the styles trained on, never the same audio); a value needs positives in 3 of those tracks
ls -d "$PWD/$WORK"/unlabelled/* > "$WORK/debian.txt"
awk 'NR % 8 != 0' "$WORK/debian.txt" > "$WORK/unlabelled.txt"
awk 'NR % 8 == 0' "$WORK/debian.txt" > "$WORK/calibration.txt"
ls -d "$PWD/$WORK"/unseen/* > "$WORK/unseen.txt"
python scripts/mix_clips.py --data "$DATA" --out "$WORK/mixes" --count "${MIXES:-1000}" --describe "$RUNS/mixes.json" \
  --training-list "$WORK/training-clips.txt" > "$WORK/mixes.txt"
cat "$WORK/unlabelled.txt" "$WORK/mixes.txt" "$WORK/training-clips.txt" > "$WORK/distil.txt"
cat "$WORK/labelled.txt" "$WORK/debian.txt" "$WORK/unseen.txt" "$WORK/mixes.txt" > "$WORK/teacher-files.txt"
"$TEACHER_VENV/bin/python" scripts/teacher_targets.py --list "$WORK/teacher-files.txt" --out "$WORK/teacher"

python bench/teacher_probe.py --data "$DATA" --teacher-cache "$WORK/teacher" --json "$RUNS/probe.json" \
  > "$RUNS/probe.txt"

common=(--data "$DATA" --min-count 30 --config "$CONFIG" --resume --quiet)
distil=(--teacher-cache "$WORK/teacher" --unlabelled "$WORK/distil.txt")
without() {  # the recipe with one teacher signal off: train.$1 = 0, run as ablation_$2
  python - "$CONFIG" "$1" "$RUNS/$2.json" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config["train"][sys.argv[2]] = 0.0
json.dump(config, open(sys.argv[3], "w"))
PY
  musictag train "${common[@]}" --config "$RUNS/$2.json" "${distil[@]}" --epochs "$ABLATION_EPOCHS" \
    --out "$RUNS/ablation_$2.pt" > "$RUNS/ablation_$2.log"
}
if [ "${SKIP_ABLATIONS:-0}" != 1 ]; then
  musictag train "${common[@]}" --epochs "$ABLATION_EPOCHS" --out "$RUNS/ablation_labels_only.pt" \
    > "$RUNS/ablation_labels_only.log"
  without pseudo_weight no_pseudo
  without embedding_weight no_embedding
  musictag train "${common[@]}" --teacher-cache "$WORK/teacher" --unlabelled "$WORK/unlabelled.txt" \
    --epochs "$ABLATION_EPOCHS" --out "$RUNS/ablation_debian_only.pt" > "$RUNS/ablation_debian_only.log"
  musictag train "${common[@]}" "${distil[@]}" --epochs "$ABLATION_EPOCHS" --out "$RUNS/ablation_full.pt" \
    > "$RUNS/ablation_full.log"
fi

musictag train "${common[@]}" "${distil[@]}" --calibration-audio "$WORK/calibration.txt" --out "$RUNS/distilled.pt" \
  > "$RUNS/distilled.log"
musictag evaluate --data "$RUNS/distilled.pt.val.csv" --model "$RUNS/distilled.pt" --robustness --json --quiet \
  --predictions "$RUNS/val_predictions.jsonl" > "$RUNS/distilled.eval.json"
python bench/written_fields.py --data "$RUNS/distilled.pt.val.csv" --model "$RUNS/distilled.pt" \
  --predictions "$RUNS/val_predictions.jsonl" > "$RUNS/written_fields.txt"

python - "$RUNS/distilled.pt" weights/musictag-fast.pt <<'PY'
import sys
from musictag.model.checkpoint import load_checkpoint, save_checkpoint, write_sha_sidecar
save_checkpoint(load_checkpoint(sys.argv[1]), sys.argv[2], half=True)
print(write_sha_sidecar(sys.argv[2]))
PY
# shellcheck disable=SC2046
python bench/teacher_agreement.py --teacher-cache "$WORK/teacher" --model weights/musictag-fast.pt \
  $(cat "$WORK/unseen.txt") > "$RUNS/agreement.txt"
python bench/teacher_probe.py --data "$DATA" --teacher-cache "$WORK/teacher" \
  --student-eval "$RUNS/distilled.eval.json" > "$RUNS/probe_vs_student.txt"
python bench/soundtracks.py "$WORK/unseen" --count 20 --model weights/musictag-fast.pt > "$RUNS/soundtracks.md"
python bench/model_speed.py --quick > "$RUNS/model_speed.txt"
ablations=()
if [ "${SKIP_ABLATIONS:-0}" != 1 ]; then
  for f in "$RUNS"/ablation_*.pt; do ablations+=(--ablation "$f"); done
  ablations+=(--ablation "$RUNS/distilled.pt")
fi
musictag model-card weights/musictag-fast.pt --out weights/MODEL_CARD_FAST.md --evaluation "$RUNS/distilled.eval.json" \
  --evaluation-title "validation split: 144 clips by artists held out of training ($RUNS/distilled.pt)" \
  --probe "$RUNS/probe.json" --agreement "$RUNS/agreement.txt" --soundtracks "$RUNS/soundtracks.md" --sources "$RUNS/sources.json" \
  --sources "$RUNS/mixes.json" \
  --speed "$RUNS/model_speed.txt" --notes scripts/model_card_notes.md "${ablations[@]}"

python scripts/convert_musicnn.py --teacher-venv "$TEACHER_VENV"
python scripts/joint_features.py "$DATA" "$RUNS/joint-features.npz" --model weights/musictag-fast.pt \
  > "$RUNS/joint-features.log"
# the recipe judged on artists it never heard: heads fitted on the training artists, through the scan
# pipeline, against the probe with paired-bootstrap intervals; then the shipped heads, fitted on all clips
python scripts/build_joint_model.py "$RUNS/joint-features.npz" "$DATA" "$RUNS/joint-val.pt" \
  --base weights/musictag-fast.pt --patches "${JOINT_PATCHES:-2}" --validation-split "$RUNS/joint-val.csv" \
  > "$RUNS/joint-val.log"
musictag evaluate --data "$RUNS/joint-val.csv" --model "$RUNS/joint-val.pt" --json --quiet \
  --predictions "$RUNS/joint-val.jsonl" > "$RUNS/joint-val.eval.json"
python bench/teacher_probe.py --data "$DATA" --teacher-cache "$WORK/teacher" --predictions "$RUNS/joint-val.jsonl" \
  --json "$RUNS/probe-vs-joint.json" > "$RUNS/probe-vs-joint.txt"
python bench/scan_speed.py --model weights/musictag-fast.pt --tracks 40 --copies 1 > "$RUNS/scan-speed-fast.txt"
python scripts/build_joint_model.py "$RUNS/joint-features.npz" "$DATA" weights/musictag.pt \
  --base weights/musictag-fast.pt --patches "${JOINT_PATCHES:-2}" --json "$RUNS/joint.json" > "$RUNS/joint.log"
python bench/scan_speed.py --tracks 40 --copies 1 > "$RUNS/scan-speed.txt"
# shellcheck disable=SC2046
python bench/teacher_agreement.py --teacher-cache "$WORK/teacher" --excerpts $(cat "$WORK/unseen.txt") \
  > "$RUNS/agreement-default.txt"
# the card last: it quotes the speed of the model it describes (the fit is deterministic: the same file again)
python scripts/build_joint_model.py "$RUNS/joint-features.npz" "$DATA" weights/musictag.pt \
  --base weights/musictag-fast.pt --patches "${JOINT_PATCHES:-2}" --json "$RUNS/joint.json" \
  --card weights/MODEL_CARD.md --probe "$RUNS/probe-vs-joint.json" --speed "$RUNS/scan-speed.txt" \
  --agreement "$RUNS/agreement-default.txt" >> "$RUNS/joint.log"
