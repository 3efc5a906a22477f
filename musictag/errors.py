"""Typed errors. Every error about a file carries its path, so a run can report one line per file."""

from __future__ import annotations

import os


class MusictagError(Exception):
    """Base class for errors musictag reports to the user."""


class FileError(MusictagError):
    """An error about one file; the message always starts with the path."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class AudioDecodeError(FileError):
    """The file could not be decoded as audio (empty, garbage, truncated to nothing, unsupported)."""


class TagReadError(FileError):
    """The file's tags could not be read (not a tag format mutagen knows, damaged tags)."""


class TagWriteError(FileError):
    """Writing the file's tags failed; the file is left as it was."""


class FileChangedError(TagWriteError):
    """Another program saved the file while its tags were being written; it keeps that program's version."""


class CheckpointError(FileError):
    """A model checkpoint is missing, corrupt, truncated or of an incompatible version."""


class DatabaseError(FileError):
    """The scan database cannot be created or opened (not a database, corrupt, no permission)."""


class DeviceError(MusictagError):
    """The device asked for is not one musictag runs on, or is not available here."""


class ManifestError(MusictagError):
    """A training manifest or data folder is malformed."""


class WindowError(MusictagError):
    """One window of audio could not be scored on its own (out of memory even alone): its track fails,
    the other windows of the batch are scored without it."""

    def __init__(self, index: int, reason: str):
        self.index, self.reason = index, reason
        super().__init__(reason)


class EngineError(MusictagError):
    """The engine cannot run (Ray not installed, a cluster that cannot be reached): one line."""
