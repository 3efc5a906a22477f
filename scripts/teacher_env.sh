#!/usr/bin/env bash
# The training-only teacher: musicnn 0.1.0 (ISC) in a venv of its own, never a musictag dependency.
# Its metadata pins numpy<1.17 and TensorFlow 1.x, which cannot resolve on Python 3.11, so TF 2.15's
# compat.v1 graph mode runs it and musicnn goes in with --no-deps (../shared/docs/teachers.md).
#   scripts/teacher_env.sh [VENV]      (default: .teacher-venv; idempotent)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${TEACHER_VENV:-.teacher-venv}}
PYTHON=${PYTHON:-python3}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import musicnn, tensorflow" >/dev/null 2>&1; then
  echo "$VENV: teacher ready"; exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "tensorflow-cpu==2.15.1" "librosa==0.10.2.post1" soundfile
"$VENV/bin/python" -m pip install -q --no-deps "musicnn==0.1.0"
"$VENV/bin/python" -c "import musicnn, tensorflow; print('teacher ready:', tensorflow.__version__)"
