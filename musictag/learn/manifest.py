"""Labelled data sets: manifest CSVs and folder-per-class layouts, label vocabularies, artist splits.

Manifest: a CSV with a `path` column (relative to the CSV's folder); every other column is a label
group whose cells hold `;`-separated values. A group whose every row holds exactly one value is a
single-label group (softmax head), any other a multi-label group (sigmoid head).
"""

from __future__ import annotations

import csv
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..defaults import FOLDER_FIELD
from ..errors import ManifestError
from ..library import AUDIO_EXTENSIONS

METADATA_COLUMNS = ("artist", "title", "album", "id")


@dataclass
class Example:
    path: str  # absolute
    name: str  # as written in the manifest (or relative to the data folder)
    labels: dict[str, list[str]]
    group: str = ""  # rows sharing a group (the artist) stay on one side of a split


@dataclass
class Dataset:
    examples: list[Example]
    heads: dict[str, str] = field(default_factory=dict)  # group -> "single" | "multi"
    vocab: dict[str, list[str]] = field(default_factory=dict)  # group -> labels in output order
    source: str = ""  # where the examples come from, as a model card names it ("" : not recorded)

    def head_shapes(self) -> dict[str, tuple[str, int]]:
        """The model heads this data set trains: group -> (kind, number of labels)."""
        return {g: (kind, len(self.vocab[g])) for g, kind in self.heads.items()}


def split_values(cell: str) -> list[str]:
    return [v.strip() for v in (cell or "").split(";") if v.strip()]


def read_manifest(path: str | Path, ignore: tuple[str, ...] = (), single: tuple[str, ...] = (),
                  min_count: int = 1, folder_field: str = FOLDER_FIELD) -> Dataset:
    """Read a manifest CSV, or a folder-per-class directory (its labels for the field `folder_field`: the
    head a model trains, the tag field a scan writes them to), into a Dataset with its vocabulary."""
    path = Path(path)
    if path.is_dir():
        return _read_folders(path, min_count, folder_field)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file or folder")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if "path" not in columns:
            raise ManifestError(f"{path}: no 'path' column (columns found: {', '.join(columns) or 'none'})")
        rows = list(reader)
    groups = [c for c in columns if c != "path" and c not in METADATA_COLUMNS and c not in ignore]
    if not groups:
        raise ManifestError(f"{path}: no label columns besides 'path'")
    examples = []
    for line, row in enumerate(rows, start=2):
        name = (row.get("path") or "").strip()
        if not name:
            raise ManifestError(f"{path}:{line}: empty path")
        audio = (path.parent / name).resolve()
        if not audio.is_file():
            raise ManifestError(f"{path}:{line}: audio file not found: {audio}")
        labels = {g: split_values(row.get(g, "")) for g in groups}
        examples.append(Example(str(audio), name, labels, (row.get("artist") or "").strip()))
    if not examples:
        raise ManifestError(f"{path}: no rows")
    for g in groups:
        if not any(e.labels[g] for e in examples):
            raise ManifestError(f"{path}: label column {g!r} is empty (use --ignore {g} to leave it out)")
    heads = {g: "single" if g in single or all(len(e.labels[g]) == 1 for e in examples) else "multi"
             for g in groups}
    return build_vocabulary(Dataset(examples, heads), min_count)


def _read_folders(root: Path, min_count: int, field: str) -> Dataset:
    examples = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for audio in sorted(class_dir.rglob("*")):
            if audio.suffix.lower() in AUDIO_EXTENSIONS and audio.is_file():
                examples.append(Example(str(audio.resolve()), str(audio.relative_to(root)),
                                        {field: [class_dir.name]}))
    if not examples:
        raise ManifestError(f"{root}: no audio files in class sub-folders (expected {root}/<label>/*.mp3)")
    return build_vocabulary(Dataset(examples, {field: "single"}), min_count)


def build_vocabulary(dataset: Dataset, min_count: int = 1) -> Dataset:
    """Keep labels with at least min_count examples; sorted for a stable output order."""
    for group in dataset.heads:
        counts = Counter(v for e in dataset.examples for v in e.labels[group])
        kept = sorted(label for label, n in counts.items() if n >= min_count)
        if len(kept) < 2:
            raise ManifestError(f"label group {group!r}: fewer than 2 labels with at least {min_count} examples")
        dataset.vocab[group] = kept
    if any(kind == "single" for kind in dataset.heads.values()):
        # a single-label row whose label was dropped can't be trained on: drop the row
        dataset.examples = [e for e in dataset.examples if all(
            kind != "single" or (e.labels[g] and e.labels[g][0] in dataset.vocab[g])
            for g, kind in dataset.heads.items())]
    return dataset


def with_vocabulary(dataset: Dataset, vocab: dict[str, list[str]], heads: dict[str, str]) -> Dataset:
    """The same examples scored against a model's vocabulary (for evaluation)."""
    shared = {g: v for g, v in vocab.items() if g in dataset.heads}
    return Dataset(dataset.examples, {g: heads[g] for g in shared}, shared)


def split_by_group(examples: list[Example], fraction: float, seed: int = 0
                   ) -> tuple[list[Example], list[Example]]:
    """Hold out about `fraction` of examples, whole groups (artists) at a time when groups exist."""
    keys = sorted({e.group or e.path for e in examples})
    random.Random(seed).shuffle(keys)
    target, held = fraction * len(examples), set()
    sizes = Counter(e.group or e.path for e in examples)
    count = 0
    for key in keys:
        if count >= target:
            break
        held.add(key)
        count += sizes[key]
    train = [e for e in examples if (e.group or e.path) not in held]
    val = [e for e in examples if (e.group or e.path) in held]
    return train, val


def target_rows(targets: np.ndarray, n_labels: int) -> np.ndarray:
    """encode_targets' output for one head as (examples, n_labels) float rows: a single-label head's
    indices one-hot, an unknown label (-1) a NaN row (no target); rows (multi-label, soft) as they are."""
    if targets.ndim == 2:
        return targets.astype(np.float32)
    rows = np.eye(n_labels, dtype=np.float32)[np.maximum(targets, 0)]
    rows[targets < 0] = np.nan
    return rows


def encode_targets(examples: list[Example], heads: dict[str, str], vocab: dict[str, list[str]]
                   ) -> dict[str, np.ndarray]:
    """Training targets per head: single-label heads the label's index (-1: not in the vocabulary),
    multi-label heads a 0/1 row per example."""
    targets = {}
    for head, kind in heads.items():
        index = {label: i for i, label in enumerate(vocab[head])}
        if kind == "single":
            targets[head] = np.array([index.get((e.labels[head] or [""])[0], -1) for e in examples], np.int64)
        else:
            hot = np.zeros((len(examples), len(vocab[head])), np.float32)
            for row, e in enumerate(examples):
                for label in e.labels[head]:
                    if label in index:
                        hot[row, index[label]] = 1.0
            targets[head] = hot
    return targets


def write_manifest(examples: list[Example], path: Path) -> None:
    """A manifest of the examples with absolute paths: the held-out split, ready for `evaluate`."""
    groups = list(examples[0].labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "artist", *groups])
        for e in examples:
            writer.writerow([e.path, e.group, *[";".join(e.labels[g]) for g in groups]])
