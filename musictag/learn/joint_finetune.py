"""`musictag finetune` from a CP-ResNet + musicnn model (`--from default`): new joint heads for the user's
labels on the frozen features of both networks, which stay as they are. The heads are logistic regressions
(learn/joint.py), fitted in seconds on thousands of tracks. Their input is what a scan with the base model
stored as each track's embedding (the joint heads' very input, the mean over the track's windows, as the
shipped heads were fitted); a track the database holds none for is scored now, as a scan would. Thresholds
are chosen as the shipped model's were: on out-of-fold scores over folds of whole artists, their nested
precision measured (learn/joint_recipe.py). No printing: progress goes to the callback.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..defaults import BATCH_SIZE, EMBEDDING, decode_workers
from ..errors import ManifestError
from ..model.checkpoint import Checkpoint, save_checkpoint
from ..model.musicnn_file import NETWORKS
from ..progress import Progress, no_progress
from ..store import Database
from .finetuning import finetuned_vocabulary
from .joint import FOLDS, artist_folds, install_joint, out_of_fold
from .joint_recipe import L2_GRID, _headline_metrics, builtins, calibrated_vocabulary, fit_heads
from .manifest import Dataset, encode_targets
from .metrics import head_metrics


@dataclass
class TrackFeatures:
    x: np.ndarray  # (tracks, width): the joint heads' input per track
    taggrams: dict[str, np.ndarray]  # musicnn network -> (tracks, 50): its scores, for fields that read them
    rows: list[int]  # the example each row belongs to (tracks that failed to decode have none)
    stored: int  # how many rows came from the scan database


def finetune_joint(base: Checkpoint, out: str | Path, dataset: Dataset, db: str | Path | None = None,
                   workers: int = 0, progress: Progress | None = None) -> tuple[Checkpoint, dict]:
    """A copy of the joint model `base` whose joint heads for the dataset's fields are fitted on the
    dataset (new labels, or new heads), its other heads, the CP-ResNet and musicnn as they were; written
    to `out`. Returns it and a report: how many tracks, the out-of-fold metrics, what a scan would write."""
    progress = progress or no_progress
    features = library_features(base, dataset.examples, db, workers, progress)
    examples = [dataset.examples[r] for r in features.rows]
    folds = artist_folds([e.group or e.path for e in examples], min(FOLDS, _groups(examples)))
    targets = encode_targets(examples, dataset.heads, dataset.vocab)
    progress("message", {"text": f"fitting {', '.join(dataset.heads)} on {len(examples)} tracks' features "
                                 f"({features.stored} stored by a scan), {int(folds.max()) + 1} artist folds"})
    l2 = {head: best_l2_out_of_fold(features.x, targets, head, kind, dataset.vocab, folds)
          for head, kind in dataset.heads.items()}
    oof = out_of_fold(features.x, targets, dataset.heads, dataset.vocab, folds, l2)
    checkpoint = with_new_heads(base, dataset, fit_heads(features.x, targets, dataset.heads, dataset.vocab, l2))
    checkpoint.vocabulary = finetuned_vocabulary_dicts(base, dataset, checkpoint)
    local = replace(dataset, examples=examples)
    checkpoint.vocabulary, quality = calibrated_vocabulary(checkpoint, local, list(range(len(examples))), oof,
                                                           features.taggrams, folds)
    report = builtins({"tracks": len(examples), "stored": features.stored, "folds": int(folds.max()) + 1,
                       "l2": l2, "out_of_fold": _headline_metrics(head_metrics(oof, targets, dataset.heads,
                                                                              dataset.vocab)),
                       "written": quality})
    own_library = dataset.source.startswith("the library ")
    checkpoint.training = {"finetuned_from": base.model_id, "data": dataset.source or "?",
                           "split": f"cross-validated over {report['folds']} folds of whole artists",
                           "licence": "the user's own files (none of it ships)" if own_library else "as its owner states",
                           "joint_finetune": report}
    checkpoint.sha256 = save_checkpoint(checkpoint, out)
    return checkpoint, report


def library_features(base: Checkpoint, examples: list, db: str | Path | None, workers: int,
                     progress: Progress) -> TrackFeatures:
    """Each example's joint features and musicnn scores: as a scan with `base` stored them (the audio the
    scan heard: a tag edit since does not change it), else scored now."""
    wanted = {e.path for e in examples}
    found: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    with Database(db) as database:
        for path, model, _, scores, embedding in database.embedded(NETWORKS):
            if model == base.model_id and path in wanted and set(NETWORKS) <= set(scores):
                found[path] = (embedding, {n: np.array([scores[n][label] for label in base.labels[n]])
                                           for n in NETWORKS})
    stored = set(found)
    missing = [e.path for e in examples if e.path not in found]
    if missing:
        progress("message", {"text": f"scoring {len(missing)} tracks no scan with this model stored"})
        found.update(score_tracks(base, missing, workers, progress))
    rows = [i for i, e in enumerate(examples) if e.path in found]
    if not rows:
        raise ManifestError("no track could be heard: none decoded, and no scan with this model stored any")
    x = np.stack([found[examples[i].path][0] for i in rows]).astype(np.float32)
    taggrams = {n: np.stack([found[examples[i].path][1][n] for i in rows]).astype(np.float32) for n in NETWORKS}
    return TrackFeatures(x, taggrams, rows, sum(examples[i].path in stored for i in rows))


def score_tracks(base: Checkpoint, paths: list[str], workers: int, progress: Progress
                 ) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """The tracks' joint features and musicnn scores as a scan computes them (a track that fails to decode
    is reported and left out)."""
    from ..engines.local import Job, score_locally
    from ..model.inference import ready_tagger

    tagger = ready_tagger(base, "cpu")
    tagger.embedding = True
    jobs = [Job(path, tagger.sample_rate, False, min_samples=tagger.min_samples) for path in paths]
    found = {}
    for count, done in enumerate(score_locally(tagger, jobs, decode_workers(workers), BATCH_SIZE, True), 1):
        if done.scores is None:
            progress("message", {"text": f"{done.path}: {done.error} (not a training example)"})
        else:
            found[done.path] = (done.scores[EMBEDDING], {n: done.scores[n] for n in NETWORKS})
        progress("cache", {"done": count, "total": len(paths)})
    return found


def best_l2_out_of_fold(x: np.ndarray, targets: dict, head: str, kind: str, vocab: dict, folds: np.ndarray) -> float:
    """The L2 whose out-of-fold scores are best (macro-F1 for a single-label head, else the mean of
    ROC-AUC and PR-AUC): chosen without a validation split a small library cannot spare."""
    def value(l2: float) -> float:
        oof = out_of_fold(x, {head: targets[head]}, {head: kind}, vocab, folds, l2)
        report = head_metrics(oof, {head: targets[head]}, {head: kind}, vocab)[head]
        score = report["macro_f1"] if kind == "single" else (report["roc_auc"] + report["pr_auc"]) / 2
        return -np.inf if np.isnan(score) else score
    return max(L2_GRID, key=value)


def with_new_heads(base: Checkpoint, dataset: Dataset, probes: dict) -> Checkpoint:
    """`base` with the dataset's heads as joint heads (their labels the dataset's), its other joint heads'
    weights kept as they were."""
    checkpoint = copy.deepcopy(base)
    config = replace(base.joint_config, heads={**base.joint_config.heads, **dataset.heads})
    kept = {key: value for key, value in base.joint["state_dict"].items()
            if key.split(".")[1] not in dataset.heads}
    checkpoint.labels = {**base.labels, **dataset.vocab}
    install_joint(checkpoint, probes, config)
    checkpoint.joint["state_dict"].update(kept)
    return checkpoint


def finetuned_vocabulary_dicts(base: Checkpoint, dataset: Dataset, checkpoint: Checkpoint) -> list[dict]:
    from ..model.vocabulary import vocabulary_to_dict

    return vocabulary_to_dict(finetuned_vocabulary(base.vocabulary, dataset.vocab, checkpoint.labels))


def _groups(examples: list) -> int:
    count = len({e.group or e.path for e in examples})
    if count < 2:
        raise ManifestError("too few tracks to judge the new heads: at least two artists' are needed")
    return count
