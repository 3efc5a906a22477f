"""musicnn 0.1.0 in the teacher venv (scripts/teacher_env.sh), for the PyTorch port: never imported by musictag.

  .teacher-venv/bin/python scripts/musicnn_teacher.py dump OUT.npz       the TF checkpoints' variables and labels
  .teacher-venv/bin/python scripts/musicnn_teacher.py reference OUT.npz  the parity fixture (tests/data)

The reference runs musicnn's own graph (`musicnn.models.define_model`) per 3 s patch of the generated clips in
tests/musicnn_clips.py, with the input computed as `musicnn.extractor.batch_data` does (librosa mel, float16,
log10(1 + 10000 x)); musicnn's extractor itself repeats the first patch's features for every patch, so it is
not used.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import librosa  # noqa: E402
import musicnn  # noqa: E402
import tensorflow as tf  # noqa: E402
from musicnn import configuration, models  # noqa: E402

tf.compat.v1.disable_eager_execution()  # musicnn's graph is TF1: placeholders and a Saver

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
MODELS = {"msd": ("MSD_musicnn", configuration.MSD_LABELS), "mtt": ("MTT_musicnn", configuration.MTT_LABELS)}
PATCH_FRAMES = librosa.time_to_frames(3, sr=configuration.SR, n_fft=configuration.FFT_SIZE,
                                      hop_length=configuration.FFT_HOP) + 1


def checkpoint_prefix(model: str) -> str:
    return os.path.join(os.path.dirname(musicnn.__file__), model) + "/"


def dump(out: str) -> None:
    arrays = {}
    for key, (model, labels) in MODELS.items():
        reader = tf.compat.v1.train.NewCheckpointReader(checkpoint_prefix(model))
        for name in reader.get_variable_to_shape_map():
            if "Adam" not in name and "power" not in name:
                arrays[f"{key}/{name}"] = reader.get_tensor(name)
        arrays[f"{key}/labels"] = np.array(labels)
    np.savez(out, **arrays)


def musicnn_input(audio: np.ndarray) -> np.ndarray:
    """batch_data's spectrogram of 16 kHz audio, (frames, 96), then whole non-overlapping patches."""
    rep = librosa.feature.melspectrogram(y=audio, sr=configuration.SR, hop_length=configuration.FFT_HOP,
                                         n_fft=configuration.FFT_SIZE, n_mels=configuration.N_MELS).T
    rep = np.log10(10000 * rep.astype(np.float16) + 1)
    count = rep.shape[0] // PATCH_FRAMES
    return rep[:count * PATCH_FRAMES].reshape(count, PATCH_FRAMES, configuration.N_MELS).astype(np.float32)


def run_graph(model: str, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tf.compat.v1.reset_default_graph()
    x = tf.compat.v1.placeholder(tf.float32, [None, PATCH_FRAMES, configuration.N_MELS])
    is_training = tf.compat.v1.placeholder(tf.bool)
    logits, *_, penultimate = models.define_model(x, is_training, model, 50)
    with tf.compat.v1.Session() as session:
        tf.compat.v1.train.Saver().restore(session, checkpoint_prefix(model))
        taggram, pen = session.run([tf.nn.sigmoid(logits), penultimate], {x: batch, is_training: False})
    return taggram, pen


def reference(out: str) -> None:
    from musicnn_clips import clips

    generated = clips()
    batch = np.concatenate([musicnn_input(audio) for audio in generated.values()])
    arrays = {"names": np.array(list(generated)), "input_first_patch": batch[0]}
    for key, (model, _) in MODELS.items():
        arrays[f"{key}/taggram"], arrays[f"{key}/penultimate"] = run_graph(model, batch)
    np.savez_compressed(out, **arrays)


if __name__ == "__main__":
    command, target = sys.argv[1:3]
    {"dump": dump, "reference": reference}[command](target)
    print(f"{command}: wrote {target}")
