"""The tag decision, pure (no file, no database): the values a scan writes for a track's scores (thresholds,
top-k, the vocabulary, genre aliases and whitelist), and what a file's fields become under the scan's mode
(merge keeps the user's values, replace replaces them, skip-tagged leaves a file the user tagged alone),
with the record of whose value is whose after it (store/ownership.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import __version__
from ..config import canonical_genres, genre_key
from ..defaults import THRESHOLD
from ..model.vocabulary import (FORMER_NAMES, OPT_IN_FIELDS, FieldVocabulary, available, choose, slash_free,
                                track_term_scores, vocabulary_from_dict, with_former_names)
from ..store.ownership import Owned, after_write, joined, ours, restarted, split, trivial
from .options import USER_FIELDS, ScanOptions


def writes(name: str, options: ScanOptions) -> bool:
    """Whether the scan writes field `name` (a vocabulary field, a head of a model without one, "model")."""
    return name not in OPT_IN_FIELDS if options.fields is None else name in options.fields


def field_threshold(options: ScanOptions, name: str, default: float | None = None) -> float | None:
    """The threshold asked for field `name` (one for every field, or per field); `default` when none is."""
    threshold = options.threshold.get(name) if isinstance(options.threshold, dict) else options.threshold
    return default if threshold is None else threshold


def choose_labels(scores: dict[str, dict[str, float]], kinds: dict[str, str], options: ScanOptions
                  ) -> dict[str, list[str]]:
    """For a model without a vocabulary, per head: the argmax for single-label heads; for multi-label
    heads the labels scoring at least the threshold, best first, at most top-k, and always the best one."""
    chosen = {}
    for head, label_scores in scores.items():
        if not writes(head, options):
            continue
        ranked = sorted(label_scores, key=lambda label: -label_scores[label])
        if kinds.get(head) == "single":
            chosen[head] = ranked[:1]
            continue
        k, threshold = options.top_k.get(head, options.default_top_k), field_threshold(options, head, THRESHOLD)
        chosen[head] = ranked[:1] + [label for label in ranked[1:k] if label_scores[label] >= threshold]
    return chosen


def choose_terms(vocabulary: tuple[FieldVocabulary, ...], scores: dict[str, dict[str, float]],
                 kinds: dict[str, str], options: ScanOptions) -> tuple[dict[str, list[str]], list[str]]:
    """For a model with a vocabulary: per field, the terms at or above their threshold (or --threshold),
    best first, at most top-k; and the fields where nothing was confident, which are left alone."""
    chosen, unconfident = {}, []
    for f in vocabulary:
        if not writes(f.name, options):
            continue
        single = kinds.get(f.truth_head) == "single"
        terms = choose(f, track_term_scores(f, scores), options.top_k.get(f.name, options.default_top_k),
                       field_threshold(options, f.name), single)
        if terms:
            chosen[f.name] = terms
        else:
            unconfident.append(f.name)
    return chosen, unconfident


def _tagged_by_user(current: dict[str, list[str]], owned: dict[str, Owned], separator: str) -> bool:
    """Whether genre or mood holds a value musictag did not add (skip-tagged leaves such files alone)."""
    def values(name: str) -> set[str]:
        record = owned.get(name)
        return set(split(current.get(name, []), record.separator if record else separator))

    return any(values(name) - ours(owned.get(name), current.get(name, [])) for name in USER_FIELDS)


@dataclass
class Outcome:
    """What a file's fields become: `changed`, the fields whose stored values change (to these);
    `held`, what the file holds of musictag's once written (fields this scan does not write stay); and
    `owned`, whose values are whose then."""

    changed: dict[str, list[str]]
    held: dict[str, list[str]]
    owned: dict[str, Owned]

    def record(self) -> dict[str, Owned]:
        """The ownership worth keeping: fields musictag holds something of (undo has work there)."""
        return {name: r for name, r in self.owned.items() if name in self.held and not trivial(r)}


class TagDecision:
    """A scan's rules for one model: from a track's scores the values it writes, and from a file's
    current fields (and musictag's record of them) what they become."""

    def __init__(self, options: ScanOptions, model_id: str, kinds: dict[str, str], labels: dict[str, list[str]],
                 vocabulary: list[dict]):
        self.options, self.model_id, self.kinds = options, model_id, kinds
        self.vocabulary = available(vocabulary_from_dict(vocabulary), labels) if vocabulary else ()
        self.aliases = with_former_names(options.genre_aliases)  # a genre's former name, aliased, still applies
        self.whitelist = options.genre_whitelist and tuple(FORMER_NAMES.get(g, g) for g in options.genre_whitelist)

    def ours(self, scores: dict[str, dict[str, float]]) -> tuple[dict[str, list[str]], list[str]]:
        """The values this scan would write, per field, and the fields with nothing confident."""
        if self.vocabulary:
            chosen, unconfident = choose_terms(self.vocabulary, scores, self.kinds, self.options)
        else:
            chosen, unconfident = choose_labels(scores, self.kinds, self.options), []
        chosen = {name: [slash_free(value) for value in values] for name, values in chosen.items()}
        if "genre" in chosen:  # as the user names genres (config file): aliases, whitelist
            chosen["genre"] = canonical_genres(chosen["genre"], self.aliases, self.whitelist)
            if not chosen["genre"]:
                del chosen["genre"]  # none the user wants: the field is left as it is
        if writes("model", self.options):
            chosen["model"] = [f"musictag {__version__} model {self.model_id}"]
        return chosen, unconfident

    def skips(self, current: dict[str, list[str]], owned: dict[str, Owned]) -> bool:
        """skip-tagged: the file holds a genre or mood musictag did not add, and is left alone."""
        return self.options.mode == "skip-tagged" and _tagged_by_user(current, owned, self.options.separator)

    def outcome(self, chosen: dict[str, list[str]], current: dict[str, list[str]], written: dict[str, list[str]],
                owned: dict[str, Owned]) -> Outcome:
        """The fields once this scan's values (`chosen`) are written into a file holding `current`, musictag
        having last written `written` there, with `owned` its record of whose value is whose."""
        starts = {name: restarted(owned.get(name), current[name], written.get(name), self.separator(name))
                  for name in chosen}
        new = {name: self.merged(name, current[name], values, starts[name]) for name, values in chosen.items()}
        after = {name: after_write(starts[name], current[name], new[name], self.separator(name)) for name in new}
        return Outcome({name: values for name, values in new.items() if values != current[name]},
                       {**written, **new}, {**owned, **after})

    def separator(self, name: str) -> str:
        return self.options.separator if name in USER_FIELDS else ""

    def merged(self, name: str, current: list[str], labels: list[str], record: Owned) -> list[str]:
        """The field's new values: ours, and in merge mode the user's first (ours from earlier scans that
        this one does not write again are dropped; values the user set stay, whatever scanned before; ours
        that the user took out of the field are not written again)."""
        separator = self.separator(name)
        if self.options.mode != "merge" or name not in USER_FIELDS:
            return joined(labels, separator)
        stale = set(record.added)  # the current values split as musictag last joined them, new ones as now
        kept = [v for v in split(current, record.separator) if v not in stale]  # the user's, not our stale ones
        aliases = self.aliases if name == "genre" else {}
        # "Hip Hop" and "Hip-Hop" are one genre
        known = {genre_key(v, aliases) for v in kept + record.declined}
        return joined(kept + [label for label in labels if genre_key(label, aliases) not in known], separator)
