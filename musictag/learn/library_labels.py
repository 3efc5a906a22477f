"""Labels from a user's own library: their existing tags become training targets for finetuning.

Values musictag wrote are never labels: learning them back would teach a model its own guesses. The scan
database knows what it wrote into each file (less what the file held before); a file that carries
musictag's marker (the `model` field) but that this database does not know was tagged from another
database, and there every value some musictag model could write is left out.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from ..store import Database
from ..defaults import FINETUNE_MIN_COUNT
from ..errors import ManifestError, TagReadError
from ..library import walk
from .manifest import Dataset, Example, build_vocabulary
from ..tagfile import read_fields
from ..model.vocabulary import DEFAULT_FIELDS, vocabulary_from_dict

SEPARATORS = re.compile(r"\s*[;,|]\s*")  # "Rock; Pop", "Rock, Pop", "Rock | Pop" ("Pop/Rock", "Drum & Bass" are one genre)
MARKER = "model"  # the field in which musictag names itself and its model
ARTIST = "artist"  # what splits and folds keep together


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


@dataclass
class OwnValues:
    """What musictag wrote into a library: per file from the scan database, and for marked files the
    database does not know, every value some musictag model could write (`possible`, per field)."""

    db: Database | None = None
    possible: dict[str, set[str]] = field(default_factory=dict)  # field -> casefolded values

    def of(self, path: str, fields: list[str], marked: bool) -> dict[str, set[str]]:
        """Per field, the casefolded values of `path` that musictag wrote (not the user's)."""
        record = self.db.get(path) if self.db is not None else None
        if record is not None and record.written:
            owned = self.db.owned(path, record.written)
            return {f: {v.casefold() for v in owned[f].added} if f in owned else set() for f in fields}
        if marked:
            return {f: self.possible.get(f, set()) for f in fields}
        return {}


def library_dataset(root, fields: list[str], min_count: int = FINETUNE_MIN_COUNT,
                    own: OwnValues | None = None) -> Dataset:
    """Every audio file under root with its normalised tag values per field as labels, less the values
    musictag wrote (`own`)."""
    if not fields:
        raise ManifestError("--field: name at least one tag field (genre, mood)")
    own = own or OwnValues()
    examples, canonical, left_out = [], {}, 0
    for path in walk([root]):
        try:
            values = read_fields(path, list(dict.fromkeys([*fields, MARKER, ARTIST])))
        except TagReadError:
            continue  # unreadable tags: the file is just not a training example
        ours = own.of(path, fields, bool(values[MARKER]))
        labels = {}
        for f in fields:
            found = normalise_values(values[f])
            kept = [v for v in found if v.casefold() not in ours.get(f, set())]
            left_out += len(found) - len(kept)
            labels[f] = [canonical.setdefault((f, v.casefold()), v) for v in kept]
        if any(labels.values()):
            # an artist's tracks stay on one side of a split (none: the track is its own group)
            artist = next((v.strip().casefold() for v in values[ARTIST] if v.strip()), "")
            examples.append(Example(path, path, labels, group=artist))
    if not examples:
        raise ManifestError(f"{root}: no audio files with {'/'.join(fields)} tags"
                            + (f" of your own ({left_out} values musictag wrote are not labels)" if left_out else ""))
    _check_enough_labels(examples, fields, min_count)
    dataset = build_vocabulary(Dataset(examples, {f: "multi" for f in fields}), min_count)
    dataset.examples = [e for e in dataset.examples
                        if any(v in dataset.vocab[f] for f in fields for v in e.labels[f])]
    return dataset


def _check_enough_labels(examples: list[Example], fields: list[str], min_count: int) -> None:
    """A field needs two labels with `min_count` tracks each; if not, say which labels there are."""
    for f in fields:
        counts = Counter(v for e in examples for v in e.labels[f])
        if sum(n >= min_count for n in counts.values()) < 2:
            found = ", ".join(f"{label} ({n})" for label, n in counts.most_common(20)) or "none"
            more = f" and {len(counts) - 20} more" if len(counts) > 20 else ""
            raise ManifestError(f"--field {f}: fewer than 2 labels with at least {min_count} tracks (--min-count); "
                                f"labels found, with their tracks: {found}{more}")


def own_values(db: Database | None, models: list[tuple[dict[str, list[str]], list[dict]]],
               fields: list[str]) -> OwnValues:
    """OwnValues of a library: `db` its scan database; `models` the labels and vocabulary of models that
    may have tagged it (the database's, the base model's). Their values, and the shipped vocabulary's,
    are what a marked file unknown to the database may hold of ours."""
    possible = {f: set() for f in fields}
    vocabularies = [DEFAULT_FIELDS] + [vocabulary_from_dict(v) for _, v in models]
    for f in fields:
        possible[f].update(v.casefold() for labels, _ in models for v in labels.get(f, []))
        possible[f].update(t.name.casefold() for vocabulary in vocabularies for fv in vocabulary if fv.name == f
                           for t in fv.terms)
    return OwnValues(db, possible)
