"""Run the teacher (musicnn 0.1.0, both MSD_musicnn and MTT_musicnn) over audio files and cache what it
says about every 3 s patch: both taggrams (sigmoid probabilities, 50 tags each) and both penultimate
embeddings (200 values each).

Runs only in the teacher venv (scripts/teacher_env.sh), never inside musictag:

    .teacher-venv/bin/python scripts/teacher_targets.py --list FILES.txt --out CACHE_DIR

One .npz per audio file, named by musictag.learn.distill.teacher_key's recipe (a hash of the file's bytes), so
an edited file is analysed again and a finished one never is, wherever it lies: an interrupted run
resumes. Each .npz holds `msd`, `mtt` (patches, 50) float16, `msd_emb`, `mtt_emb` (patches, 200) float16
and `patch_seconds`.

Why not musicnn.extractor.extractor: with extract_features=True it repeats the first patch's features for
every patch, and it feeds a whole track as one batch (a long track exhausted 24 GB). Here the graph is
built once per model, and patches go through in batches of BATCH; BatchNorm runs in inference mode, so
the batch size does not change the result.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

MODELS = {"msd": "MSD_musicnn", "mtt": "MTT_musicnn"}
BATCH = 64
MAX_SECONDS = 600.0  # as musictag's training cache: later audio is never cropped for training


def teacher_key(path: str) -> str:
    """Keep in step with musictag.learn.distill.teacher_key (this file cannot import musictag)."""
    digest = hashlib.sha1(b"musicnn-0.1.0")
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Teacher:
    def __init__(self):
        import tensorflow as tf
        from musicnn import configuration, models

        tf.compat.v1.disable_eager_execution()
        self.tf, self.config = tf, configuration
        self.labels = {"msd": list(configuration.MSD_LABELS), "mtt": list(configuration.MTT_LABELS)}
        self.n_frames = int(3 * configuration.SR - configuration.FFT_SIZE // 2) // configuration.FFT_HOP + 1
        self.sessions = {}
        for head, name in MODELS.items():
            graph = tf.Graph()
            with graph.as_default():
                x = tf.compat.v1.placeholder(tf.float32, [None, self.n_frames, configuration.N_MELS])
                training = tf.compat.v1.placeholder(tf.bool)
                outputs = models.define_model(x, training, name, 50)
                fetch = [tf.nn.sigmoid(outputs[0]), outputs[-1]]  # probabilities, penultimate
                session = tf.compat.v1.Session(graph=graph, config=tf.compat.v1.ConfigProto(
                    intra_op_parallelism_threads=2, inter_op_parallelism_threads=1))
                tf.compat.v1.train.Saver().restore(session, str(Path(models.__file__).parent / name) + "/")
            self.sessions[head] = (session, x, training, fetch)

    @property
    def patch_seconds(self) -> float:
        return self.n_frames * self.config.FFT_HOP / self.config.SR

    def patches(self, path: str) -> np.ndarray:
        """musicnn's own front end (extractor.batch_data), non-overlapping patches; () when too short."""
        import librosa

        c = self.config
        audio, sr = librosa.load(path, sr=c.SR, duration=MAX_SECONDS)
        mel = librosa.feature.melspectrogram(y=audio, sr=sr, hop_length=c.FFT_HOP, n_fft=c.FFT_SIZE,
                                             n_mels=c.N_MELS).T.astype(np.float16)
        mel = np.log10(10000 * mel + 1)
        starts = range(0, mel.shape[0] - self.n_frames + 1, self.n_frames)
        return np.stack([mel[s:s + self.n_frames] for s in starts]) if len(starts) else np.zeros((0,))

    def run(self, patches: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for head, (session, x, training, fetch) in self.sessions.items():
            probs, embeddings = [], []
            for start in range(0, len(patches), BATCH):
                p, e = session.run(fetch, {x: patches[start:start + BATCH], training: False})
                probs.append(p)
                embeddings.append(e.reshape(len(p), -1))
            out[head] = np.concatenate(probs).astype(np.float16)
            out[f"{head}_emb"] = np.concatenate(embeddings).astype(np.float16)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", required=True, help="text file, one audio path per line")
    parser.add_argument("--out", required=True, help="cache folder for the .npz files")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [line.strip() for line in open(args.list, encoding="utf-8") if line.strip()]
    keys = {p: teacher_key(p) for p in paths}  # each file read once to hash it, not again per use
    todo = [p for p in paths if not (out / f"{keys[p]}.npz").is_file()]
    print(f"{len(paths) - len(todo)} of {len(paths)} files already analysed", flush=True)
    if not todo:
        return
    teacher, began, failed = Teacher(), time.time(), 0
    with ThreadPoolExecutor(1) as decoder:  # decode the next file while TensorFlow runs this one
        pending = decoder.submit(teacher.patches, todo[0])
        for i, path in enumerate(todo):
            try:
                patches = pending.result()
            except Exception as e:  # one unreadable file must not end a run of hours
                patches, failed = None, failed + 1
                print(f"{path}: cannot decode ({type(e).__name__}: {e})", file=sys.stderr, flush=True)
            if i + 1 < len(todo):
                pending = decoder.submit(teacher.patches, todo[i + 1])
            if patches is None or len(patches) == 0:
                continue
            result = teacher.run(patches)
            tmp = out / f".{keys[path]}.tmp.npz"
            np.savez(tmp, patch_seconds=np.float32(teacher.patch_seconds), msd_labels=np.array(teacher.labels["msd"]),
                     mtt_labels=np.array(teacher.labels["mtt"]), **result)
            os.replace(tmp, out / f"{keys[path]}.npz")
            if (i + 1) % 20 == 0 or i + 1 == len(todo):
                print(f"{i + 1}/{len(todo)} files, {time.time() - began:.0f} s", flush=True)
    print(f"done: {len(todo) - failed} analysed, {failed} failed", flush=True)


if __name__ == "__main__":
    main()
