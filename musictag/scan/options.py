"""What a scan is asked (ScanOptions, and the fingerprint of what decides its tags), what it scores with
(ScanModel: the model's heads and vocabulary known at once, the tagger loaded only when a file needs it),
and what it reports (ScanResult)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Callable

from ..defaults import (BATCH_SIZE, EXCERPT_COUNT, ID3_VERSION, LOCAL_ENGINE, MODE, OTHER_TOP_K, TOP_K, WRITE_MODE,
                        WRITE_THREADS)

if TYPE_CHECKING:
    from ..model.inference import Tagger


USER_FIELDS = ("genre", "mood")  # fields users curate; merge keeps their values


@dataclass
class ScanOptions:
    write: bool = True
    dry_run: bool = False
    threshold: float | dict[str, float] | None = None  # None: the model's per-label thresholds (older models:
    # THRESHOLD); a dict: per field (config file), fields not named keep theirs
    fields: tuple[str, ...] | None = None  # fields written; None: all but the opt-in ones (defaults.OPT_IN_FIELDS)
    top_k: dict[str, int] = field(default_factory=lambda: dict(TOP_K))
    default_top_k: int = OTHER_TOP_K
    mode: str = MODE
    separator: str = ""  # genres and moods written as one value joined by it; "": one tag entry per value
    genre_aliases: dict[str, str] = field(default_factory=dict)  # another name of a genre -> the name written
    genre_whitelist: tuple[str, ...] | None = None  # the only genres written; None: the model's all
    batch_size: int = BATCH_SIZE  # windows per forward pass
    workers: int = 0  # 0: one per CPU core
    force: bool = False
    whole_track: bool = False  # analyse every window of each track instead of the excerpt plan
    excerpts: int = EXCERPT_COUNT  # windows per track in the excerpt plan
    model_in_workers: bool | None = None  # None: on the CPU yes, on a GPU no (the parent batches)
    id3_version: str = ID3_VERSION  # "keep" each file's ID3v2 version, or convert the files written to "3" / "4"
    write_mode: str = WRITE_MODE  # copy, inplace or auto (defaults.WRITE_MODES); the tags written are the same
    engine: str = LOCAL_ENGINE  # where tracks are decoded and scored: defaults.ENGINES
    ray_address: str | None = None  # the Ray cluster to join; None: RAY_ADDRESS, else a Ray started for the scan
    ray_device: str = "auto"  # the device of the Ray engine's model actors (auto: GPUs where the cluster has them)
    embeddings: bool = False  # every track needs its embedding (--parquet): one scored before without it is scored again
    write_threads: int = WRITE_THREADS  # tag writes under way at once (writepool.py); 0: one at a time, here


def decision_key(options: ScanOptions, model_id: str) -> str:
    """A fingerprint of everything besides the scores that decides the tags written: stored with what was
    written, so a re-scan under the same options skips the file and one under new options decides again."""
    decides = {"model": model_id, "mode": options.mode, "threshold": options.threshold,
               "fields": sorted(options.fields) if options.fields is not None else None, "top_k": sorted(options.top_k.items()),
               "default_top_k": options.default_top_k}
    plain = ScanOptions()
    for name in ("separator", "genre_aliases", "genre_whitelist"):  # the config file's
        if getattr(options, name) != getattr(plain, name):  # only then: fingerprints from before them stay valid
            decides[name] = getattr(options, name)
    if options.id3_version != ID3_VERSION:  # only then: fingerprints from before the option stay valid
        decides["id3_version"] = options.id3_version
    return hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ScanModel:
    """What a scan needs of its model: what decides the tags, known at once (from the database once a
    scan has used the model), and the tagger, loaded (torch imported) only when a file needs scoring."""

    model_id: str
    kinds: dict[str, str]
    labels: dict[str, list[str]]
    vocabulary: list[dict]
    load: Callable[[], "Tagger"]

    @classmethod
    def of(cls, tagger: "Tagger") -> "ScanModel":
        c = tagger.checkpoint
        return cls(c.model_id, c.kinds, c.labels, c.vocabulary, lambda: tagger)

    @cached_property
    def tagger(self) -> "Tagger":
        return self.load()


@dataclass
class Change:
    path: str
    before: dict[str, list[str]]
    after: dict[str, list[str]]


@dataclass
class ScanResult:
    tagged: int = 0
    scored: int = 0  # scored but not written (--no-write, --dry-run)
    unchanged: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # new failures: the run's exit code
    failed_before: list[tuple[str, str]] = field(default_factory=list)  # the same failure, file unchanged since
    unconfident: dict[str, int] = field(default_factory=dict)  # field -> tracks where nothing was confident
    kept_fields: int = 0  # undo: fields left as they are, changed since musictag wrote them ...
    kept_files: int = 0  # ... and the files that have at least one
    changes: list[Change] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)  # temporary copies of killed runs, removed
    repaired: list[str] = field(default_factory=list)  # files an in-place write of a killed run was cut short in
    moved: list[tuple[str, str]] = field(default_factory=list)  # (from, to): records that followed their file
    gone: list[str] = field(default_factory=list)  # records whose file is gone, reported once (not failures)
    model_id: str = ""  # the model the scan used
    expected: dict[str, float] = field(default_factory=dict)  # field written -> cross-validated precision
    seen: int = 0  # audio files found under the paths (scan)
