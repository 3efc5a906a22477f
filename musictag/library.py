"""A music library as files: which extensions are audio, every audio file under some folders, and
whether a path lies under one of them."""

from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator

AUDIO_EXTENSIONS = {".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".mp4", ".aac", ".wav", ".aif",
                    ".aiff", ".wma"}
NOT_A_FILE = "not a regular file (a pipe, a device or a link to one); skipped"


def walk(paths: Iterable[str | os.PathLike],
         on_error: Callable[[str, str], None] | None = None) -> Iterator[str]:
    """Audio files under the given paths: deterministic order, hidden entries skipped, symlinks
    followed once (a link back up the tree is not entered again), each real file yielded once.
    A folder that cannot be read goes to `on_error(path, reason)` rather than vanishing unnoticed."""
    def folder_error(e: OSError) -> None:
        if on_error:
            on_error(e.filename, f"cannot read folder: {e.strerror}")

    seen_dirs, seen_files = set(), set()
    for root in paths:
        root = os.path.abspath(os.fspath(root))
        if os.path.isfile(root):
            real = os.path.realpath(root)
            if real not in seen_files:
                seen_files.add(real)
                yield real
            continue
        if os.path.exists(root) and not os.path.isdir(root):  # a FIFO, a device, a link to one
            if on_error and os.path.realpath(root) not in seen_files:
                on_error(root, NOT_A_FILE)
            seen_files.add(os.path.realpath(root))
            continue
        for directory, dirs, files in os.walk(root, onerror=folder_error, followlinks=True):
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen_dirs:
                dirs[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or os.path.splitext(name)[1].lower() not in AUDIO_EXTENSIONS:
                    continue
                real = os.path.realpath(os.path.join(directory, name))
                if real in seen_files:
                    continue
                if os.path.isfile(real):
                    seen_files.add(real)
                    yield real
                elif os.path.exists(real):  # named like audio, but a pipe or a device
                    seen_files.add(real)
                    if on_error:
                        on_error(os.path.join(directory, name), NOT_A_FILE)


def within(roots: Iterable[str | os.PathLike]) -> Callable[[str], bool]:
    """A test for paths as the database stores them (real paths): is it one of the roots, or inside one?"""
    roots = [os.path.realpath(root).rstrip(os.sep) for root in roots]
    return lambda path: any(path == r or path.startswith(r + os.sep) for r in roots)
