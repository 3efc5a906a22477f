"""What scan writes: a vocabulary of genres and moods people use, each scored from the model heads that
carry it, each written only above a threshold chosen on validation for a stated precision.

A term is one value a field can hold ("Jazz", "calm"). Its score is the mean of its sources' probabilities
("genre:Jazz" from the 4Q AllMusic head, "msd:jazz" from the head distilled from musicnn's Last.fm tags);
`judged_by` names the AllMusic labels (of the head `truth_head`) that make it right on labelled data, so
thresholds can be chosen and the written tags scored. A term too rare in the labelled validation clips to
calibrate there (instruments and voice have no labels at all) is calibrated against the teacher instead,
on held-out audio the student never trained on: right when musicnn ranks one of the term's sources among
its top tags for that stretch (`teacher_truth`). A checkpoint stores its vocabulary with the chosen
thresholds and where each came from (`to_dict`); scan reads it back (`from_dict`), so thresholds always
travel with their weights.

Pure: no I/O, no torch. Probabilities come in as {head: {label: p}} (one track, as the database stores
them) or {head: array (tracks, labels)} (evaluation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ..defaults import DEFAULT_PRECISION_TARGET, OPT_IN_FIELDS, OTHER_TOP_K, PRECISION_TARGET, TEACHER_TOP, TOP_K

MIN_POSITIVES = 3  # a term with fewer positives than this keeps its threshold (the prior, if nothing else)
PRIOR_THRESHOLD = 0.5  # terms nobody could calibrate
NEVER = 1.0 + 1e-6  # the threshold of a term whose calibration reached its target nowhere: above every probability
# What a threshold was calibrated on: "" nothing (the prior); BASE: a finetuned model's base model (terms
# of fields it kept); None: not recorded (a checkpoint from before this was)
VALIDATION, TEACHER, BASE = "validation", "teacher", "base model"


@dataclass(frozen=True)
class Term:
    name: str  # the value written into the field
    sources: tuple[str, ...]  # "head:label" whose probabilities are averaged
    judged_by: tuple[str, ...] = ()  # labels of the truth head that make this term right
    threshold: float = PRIOR_THRESHOLD
    calibrated_on: str | None = ""  # VALIDATION, TEACHER, BASE, "" (the prior) or None (not recorded)


@dataclass(frozen=True)
class FieldVocabulary:
    name: str  # the tag field (tags.FIELDS)
    terms: tuple[Term, ...]
    truth_head: str = ""  # the labelled head its terms are judged against ("" : none, thresholds are priors)
    # a track none of whose terms reaches its own threshold still gets its best term when that term's score
    # reaches this (calibrate_best): a field whose every track has some value (a genre) is then written
    # on more tracks, at a precision calibrated for it. None: only terms at their own thresholds
    best_threshold: float | None = None
    # the cross-validated share of its written values that are right (None: not measured), for the scan summary
    expected_precision: float | None = None

    def to_dict(self) -> dict:
        data = {"name": self.name, "truth_head": self.truth_head,
                "terms": [{**asdict(t), "sources": list(t.sources), "judged_by": list(t.judged_by)}
                          for t in self.terms]}
        optional = {"best_threshold": self.best_threshold, "expected_precision": self.expected_precision}
        return {**data, **{k: v for k, v in optional.items() if v is not None}}

    @classmethod
    def from_dict(cls, data: dict) -> "FieldVocabulary":
        terms = tuple(Term(FORMER_NAMES.get(t["name"], t["name"]), tuple(t["sources"]), tuple(t.get("judged_by", ())),
                           float(t.get("threshold", PRIOR_THRESHOLD)), t.get("calibrated_on"))
                      for t in data["terms"])
        best, expected = data.get("best_threshold"), data.get("expected_precision")
        return cls(data["name"], terms, data.get("truth_head", ""), None if best is None else float(best),
                   None if expected is None else float(expected))


def _terms(rows: list[tuple[str, str, str]], truth_head: str) -> tuple[Term, ...]:
    """(name, sources separated by spaces, judged_by separated by |) rows into Terms."""
    return tuple(Term(name, tuple(sources.split()), tuple(j for j in judged.split("|") if j))
                 for name, sources, judged in rows)


# Genres a listener recognises, each from the heads that carry it, judged against AllMusic's genres.
# Source labels use "_" for spaces inside a label ("msd:classic_rock" is the tag "classic rock").
GENRES = _terms([
    ("Rock", "genre:Pop/Rock msd:rock", "Pop/Rock"),
    ("Pop", "genre:Pop/Rock msd:pop", "Pop/Rock"),
    ("Metal", "genre:Pop/Rock msd:metal mtt:metal", "Pop/Rock"),
    ("Electronic", "genre:Electronic msd:electronic", "Electronic"),
    ("Hip-Hop", "genre:Rap msd:Hip-Hop", "Rap"),
    ("Jazz", "genre:Jazz msd:jazz", "Jazz"),
    ("Blues", "genre:Blues msd:blues", "Blues"),
    ("Classical", "mtt:classical", "Classical"),
    ("Country", "genre:Country msd:country", "Country"),
    ("Folk", "genre:Folk msd:folk", "Folk"),
    ("R&B", "genre:R&B msd:soul msd:rnb", "R&B"),
    ("Reggae", "genre:Reggae", "Reggae"),
    ("Latin", "genre:Latin", "Latin"),
    ("Ambient", "genre:New_Age msd:ambient mtt:new_age", "New Age"),
    ("Soundtrack", "genre:Stage_&_Screen", "Stage & Screen"),
    ("World", "genre:International", "International"),
    ("Vocal", "genre:Vocal", "Vocal"),
], "genre")

# Terms' former names, which held a "/" (ID3v2.3 readers split values on it): vocabularies stored before
# (checkpoints, scan databases) write the new name; a genre alias of the former name still applies.
FORMER_NAMES = {"Ambient/New Age": "Ambient", "R&B/Soul": "R&B"}

# AllMusic's 62 most frequent 4Q moods in ten groups of near-synonyms; the first word names the group.
_MOOD_GROUPS = {
    "calm": "calm peaceful soothing relaxed quiet soft gentle delicate lazy",
    "sad": "sad gloomy bleak somber weary brooding anguished distraught negative",
    "angry": "angry hostile harsh fierce bitter volatile uncompromising rebellious outrageous reckless",
    "tense": "tense nervous anxious jittery ominous menacing",
    "happy": "happy cheerful joyous fun light innocent sparkling",
    "energetic": "energetic exciting lively fiery",
    "dreamy": "dreamy atmospheric ethereal hypnotic lush",
    "sensual": "sensual sexy spicy greasy",
    "spiritual": "spiritual reverent",
    "elegant": "elegant refined reserved restrained cerebral organic",
}
MOODS = tuple(Term(name, tuple(f"mood:{m}" for m in members.split()), tuple(members.split()))
              for name, members in _MOOD_GROUPS.items())

QUADRANTS = tuple(Term(q, (f"quadrant:{q}",), (q,)) for q in ("Q1", "Q2", "Q3", "Q4"))

INSTRUMENTS = _terms([(name, f"mtt:{name}", "") for name in (
    "piano", "guitar", "strings", "violin", "cello", "drums", "synth", "flute", "harp", "harpsichord",
    "sitar", "choir")], "")
VOICES = _terms([
    ("instrumental", "msd:instrumental mtt:no_vocals", ""),
    ("female vocals", "msd:female_vocalists mtt:female_vocal", ""),
    ("male vocals", "msd:male_vocalists mtt:male_vocal", ""),
], "")

DEFAULT_FIELDS = (FieldVocabulary("genre", GENRES, "genre"), FieldVocabulary("mood", MOODS, "mood"),
                  FieldVocabulary("quadrant", QUADRANTS, "quadrant"),
                  FieldVocabulary("instrument", INSTRUMENTS), FieldVocabulary("voice", VOICES))


def slash_free(value: str) -> str:
    """A value as written: never with a "/", which ID3v2.3 readers take for a list ("Pop/Rock" is one
    label of a model without a vocabulary: "Pop & Rock")."""
    value = FORMER_NAMES.get(value, value)
    return " & ".join(part.strip() for part in value.split("/")) if "/" in value else value


def with_former_names(aliases: dict[str, str]) -> dict[str, str]:
    """Genre aliases, those given for a term's former name applying to its new one too (an alias the user
    gives the new name wins)."""
    extra = {new: aliases[old] for old, new in FORMER_NAMES.items() if old in aliases and new not in aliases}
    return {**aliases, **extra}


def _source(source: str) -> tuple[str, str]:
    head, label = source.split(":", 1)
    return head, label.replace("_", " ")


def available(fields: tuple[FieldVocabulary, ...], labels: dict[str, list[str]]) -> tuple[FieldVocabulary, ...]:
    """The vocabulary a model with these heads can score: sources it lacks are dropped, terms left with
    none are dropped, fields left with no terms are dropped."""
    kept = []
    for f in fields:
        terms = []
        for term in f.terms:
            sources = tuple(s for s in term.sources if _source(s)[1] in labels.get(_source(s)[0], ()))
            if sources:
                terms.append(replace(term, sources=sources))
        if terms:
            kept.append(replace(f, terms=tuple(terms)))
    return tuple(kept)


def track_term_scores(f: FieldVocabulary, scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """One track's score per term, from its stored head scores."""
    out = {}
    for term in f.terms:
        values = [scores.get(h, {}).get(label) for h, label in map(_source, term.sources)]
        values = [v for v in values if v is not None]
        if values:
            out[term.name] = float(np.mean(values))
    return out


def term_matrix(f: FieldVocabulary, probs: dict[str, np.ndarray], labels: dict[str, list[str]]) -> np.ndarray:
    """(tracks, terms) scores from per-head probability arrays."""
    columns = []
    for term in f.terms:
        parts = [probs[h][:, labels[h].index(label)] for h, label in map(_source, term.sources)]
        columns.append(np.mean(parts, axis=0))
    return np.stack(columns, axis=1)


def truth_matrix(f: FieldVocabulary, truth: list[list[str]]) -> np.ndarray:
    """(tracks, terms) booleans: does the track carry any label that makes the term right."""
    return np.array([[bool(set(term.judged_by) & set(labels)) for term in f.terms] for labels in truth], bool)


def choose(f: FieldVocabulary, term_scores: dict[str, float], top_k: int | None = None,
           threshold: float | None = None, single: bool = False) -> list[str]:
    """The terms worth writing, best first: at or above their threshold (or the one given), at most
    top_k. Nothing when nothing is confident: the field is then left as it is. `single` (a field of one
    value, from a single-label head: the quadrant): the best term when it reaches its threshold, never a
    runner-up that happens to pass a lower one. A term whose calibration reached its target nowhere (NEVER)
    is not written at any threshold: its scores were never right often enough to say how often it would be."""
    k = TOP_K.get(f.name, OTHER_TOP_K) if top_k is None else top_k
    scored = [t for t in f.terms if t.name in term_scores]
    if single:
        scored = sorted(scored, key=lambda t: -term_scores[t.name])[:1]
        k = 1
    passing = [t.name for t in scored
               if t.threshold < NEVER and term_scores[t.name] >= (t.threshold if threshold is None else threshold)]
    if not passing and threshold is None and f.best_threshold is not None:
        best = _best_writable(scored, term_scores)
        passing = [best.name] if best and term_scores[best.name] >= f.best_threshold else []
    return sorted(passing, key=lambda name: -term_scores[name])[:k]


def _best_writable(terms: list[Term], term_scores: dict[str, float]) -> Term | None:
    """The best-scoring term that may be written at all (one whose calibration reached its target)."""
    writable = [t for t in terms if t.threshold < NEVER]
    return max(writable, key=lambda t: term_scores[t.name]) if writable else None


def calibrate_best(f: FieldVocabulary, scores: np.ndarray, truth: np.ndarray, precision: float, z: float = 0.0,
                   min_right: int = 0) -> FieldVocabulary:
    """`f` with the best_threshold at which "each track's best writable term, when it scores at least this"
    is right `precision` of the time on these tracks (precision_threshold's z and min_right): the precision
    of a top-1 value from that score up, over all tracks. The tracks the fallback alone serves (none of
    their terms at its own threshold) are the harder ones: it is right less often on them (the joint
    recipe's nested_quality measures it). The terms' own thresholds must be calibrated first."""
    writable = np.array([t.threshold < NEVER for t in f.terms])
    if not writable.any() or not len(scores):
        return replace(f, best_threshold=None)
    masked = np.where(writable, scores, -np.inf)
    best = masked.argmax(axis=1)
    right = truth[np.arange(len(truth)), best]
    threshold = precision_threshold(masked.max(axis=1), right, precision, z, min_right)
    return replace(f, best_threshold=None if threshold >= NEVER else threshold)


def calibrate(f: FieldVocabulary, scores: np.ndarray, truth: np.ndarray, precision: float | None = None,
              min_positives: int = MIN_POSITIVES, basis: str = VALIDATION, keep_calibrated: bool = False,
              groups: np.ndarray | None = None, z: float = 0.0, min_right: int = 0) -> FieldVocabulary:
    """Per term, the lowest threshold at which the precision of "score >= threshold" on these tracks reaches
    `precision` (the terms' own columns of `scores` and `truth`, (tracks, terms)), recorded as calibrated
    on `basis`. A term that reaches it nowhere gets a threshold above its highest score (never written);
    one with too few positives keeps its threshold, and so does, with `keep_calibrated`, one calibrated
    before or not known not to be (the teacher only fills in what the labels could not). Positives are
    rows, or with `groups` (a group per row: the track a stretch came from) distinct groups, so that
    one long track cannot calibrate a term alone. `precision` None: the field's target
    (defaults.PRECISION_TARGET). `z` and `min_right`: see precision_threshold."""
    if precision is None:
        precision = PRECISION_TARGET.get(f.name, DEFAULT_PRECISION_TARGET)
    terms = []
    for j, term in enumerate(f.terms):
        positives = truth[:, j].sum() if groups is None else len(set(groups[truth[:, j]].tolist()))
        if positives < min_positives or (keep_calibrated and term.calibrated_on != ""):
            terms.append(term)
            continue
        threshold = precision_threshold(scores[:, j], truth[:, j], precision, z, min_right)
        terms.append(replace(term, threshold=threshold, calibrated_on=basis))
    return replace(f, terms=tuple(terms))


def teacher_truth(f: FieldVocabulary, teacher_probs: dict[str, np.ndarray], labels: dict[str, list[str]],
                  top: int = TEACHER_TOP) -> np.ndarray:
    """(tracks, terms) booleans: does the teacher rank one of the term's sources on its heads (`teacher_probs`,
    {head: (tracks, labels)}, label names in `labels`) among that head's `top` tags for the track. Terms
    with no source on a teacher head are never right (and so never calibrated this way)."""
    tracks = len(next(iter(teacher_probs.values())))
    truth = np.zeros((tracks, len(f.terms)), bool)
    ranked = {h: np.argsort(-p, axis=1, kind="stable")[:, :top] for h, p in teacher_probs.items()}
    for j, term in enumerate(f.terms):
        for head, label in map(_source, term.sources):
            if head in ranked and label in labels[head]:
                truth[:, j] |= (ranked[head] == labels[head].index(label)).any(axis=1)
    return truth


def precision_threshold(scores: np.ndarray, truth: np.ndarray, precision: float, z: float = 0.0,
                        min_right: int = 0) -> float:
    """The lowest score whose cut-off ("score >= it") is right at least `precision` of the time on these
    tracks; with z > 0, the Wilson lower bound of that precision (z standard errors) must reach it, and with
    min_right at least that many written values must be right: a threshold that holds on new tracks, not
    only on the ones it was chosen on. None reaches it: NEVER (above every probability: never written)."""
    order = np.argsort(-scores, kind="stable")
    hits = np.cumsum(truth[order])
    written = np.arange(1, len(order) + 1)
    reached = np.nonzero((wilson_lower(hits, written, z) >= precision) & (hits >= min_right))[0]
    if len(reached) == 0:
        return NEVER
    # the largest cut-off that still holds the precision, at a score boundary
    return float(scores[order[reached[-1]]])


def wilson_lower(right: np.ndarray, written: np.ndarray, z: float) -> np.ndarray:
    """Wilson score interval's lower end for right / written (the share itself when z is 0)."""
    right, written = np.asarray(right, float), np.asarray(written, float)
    share = right / written
    if z == 0:
        return share
    centre = share + z * z / (2 * written)
    spread = z * np.sqrt(share * (1 - share) / written + z * z / (4 * written * written))
    return (centre - spread) / (1 + z * z / written)


@dataclass
class FieldQuality:
    precision: float  # share of written terms that are right
    coverage: float  # share of tracks that get at least one term
    first_precision: float  # share of tracks' first written term that is right
    written: int = 0
    tracks: int = 0
    per_term: dict[str, dict] = field(default_factory=dict)


def written_quality(f: FieldVocabulary, scores: np.ndarray, truth: np.ndarray, top_k: int | None = None,
                    single: bool = False) -> FieldQuality:
    """How right the terms `choose` writes are, judged against `truth` (tracks, terms)."""
    names = [t.name for t in f.terms]
    right = written = first_right = covered = 0
    per_term = {name: {"written": 0, "right": 0} for name in names}
    for row in range(len(scores)):
        chosen = choose(f, dict(zip(names, scores[row].tolist())), top_k, single=single)
        hits = [bool(truth[row, names.index(name)]) for name in chosen]
        right, written = right + sum(hits), written + len(hits)
        covered += bool(chosen)
        first_right += bool(hits and hits[0])
        for name, hit in zip(chosen, hits):
            per_term[name]["written"] += 1
            per_term[name]["right"] += hit
    n = max(len(scores), 1)
    return FieldQuality(right / written if written else float("nan"), covered / n,
                        first_right / covered if covered else float("nan"), written, len(scores), per_term)


def vocabulary_to_dict(fields: tuple[FieldVocabulary, ...]) -> list[dict]:
    return [f.to_dict() for f in fields]


def vocabulary_from_dict(data: list[dict]) -> tuple[FieldVocabulary, ...]:
    return tuple(FieldVocabulary.from_dict(d) for d in data)
