"""Labels from a user's own library: their existing tags become training targets for finetuning."""

from __future__ import annotations

import re

from .defaults import FINETUNE_MIN_COUNT
from .errors import ManifestError, TagReadError
from .library import walk
from .manifest import Dataset, Example, build_vocabulary
from .tags import read_fields

SEPARATORS = re.compile(r"\s*[;,|]\s*")  # "Rock; Pop", "Rock, Pop", "Rock | Pop" ("Pop/Rock", "Drum & Bass" are one genre)


def normalise_values(values: list[str]) -> list[str]:
    """Split multi-value strings, trim, and unify case ("hip hop", "Hip Hop" -> "Hip Hop")."""
    out = []
    for value in values:
        for part in SEPARATORS.split(value):
            part = " ".join(part.split())
            if part and not part.isdigit():
                label = part if part != part.lower() else part.title()
                if label.casefold() not in {v.casefold() for v in out}:
                    out.append(label)
    return out


def library_dataset(root, fields: list[str], min_count: int = FINETUNE_MIN_COUNT) -> Dataset:
    """Every audio file under root with its normalised tag values per field as labels."""
    if not fields:
        raise ManifestError("--field: name at least one tag field (genre, mood)")
    examples, canonical = [], {}
    for path in walk([root]):
        try:
            values = read_fields(path, fields)
        except TagReadError:
            continue  # unreadable tags: the file is just not a training example
        labels = {}
        for f in fields:
            labels[f] = [canonical.setdefault((f, v.casefold()), v) for v in normalise_values(values[f])]
        if any(labels.values()):
            examples.append(Example(path, path, labels))
    if not examples:
        raise ManifestError(f"{root}: no audio files with {'/'.join(fields)} tags")
    heads = {f: "multi" for f in fields}
    dataset = build_vocabulary(Dataset(examples, heads), min_count)
    dataset.examples = [e for e in dataset.examples
                        if any(v in dataset.vocab[f] for f in fields for v in e.labels[f])]
    return dataset
