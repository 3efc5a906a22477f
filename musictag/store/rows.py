"""How rows are stored: paths as text or, when they are not valid Unicode, their bytes; the records a
query gives back."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import NamedTuple

from .ownership import Owned


def _key(path: str) -> str | bytes:
    """A path as stored: text when it is valid Unicode, else its raw bytes (a BLOB). File names from
    other systems are often not UTF-8 (Python carries their bytes as surrogates), and SQLite text must
    be; every query goes through here, so a lookup finds what was stored."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def _path(stored: str | bytes) -> str:
    return os.fsdecode(stored) if isinstance(stored, bytes) else stored


class Known(NamedTuple):
    """What the database knows of a file before it is decoded (see `Database.stats_for`)."""

    size: int
    mtime_ns: int
    model: str
    scored: bool
    written: bool
    failed: bool  # the last attempt failed (see Track.error)
    decided: str | None  # fingerprint of the options the written tags were decided under
    embedded: bool = False  # its embedding is stored with its scores


class Pending(NamedTuple):
    """A write recorded before it replaced the file (Database.put_pending)."""

    written: dict[str, list[str]]  # what the file holds of ours once it is done
    owned: dict[str, Owned] | None  # whose values are whose then (None: recorded by an older version)
    bare: bool  # the file had no tag block before it


@dataclass
class Track:
    path: str
    size: int
    mtime_ns: int
    model: str
    duration: float | None
    scores: dict[str, dict[str, float]] | None
    error: str | None
    written: dict[str, list[str]] | None


def _owned_dict(owned: dict[str, Owned]) -> dict:
    return {name: record.to_dict() for name, record in owned.items()}


def _owned_from_dict(data: dict) -> dict[str, Owned]:
    return {name: Owned.from_dict(fields) for name, fields in data.items()}


def _track(row) -> Track:
    return Track(_path(row[0]), row[1], row[2], row[3], row[4], json.loads(row[5]) if row[5] else None, row[6],
                 json.loads(row[7]) if row[7] else None)
