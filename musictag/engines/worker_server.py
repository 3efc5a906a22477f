"""Imported by the decode workers' fork server only (engines/local.py preloads it): a worker the server
forks after the scan was interrupted cannot rebuild the pool's semaphores (the scan removed them when it
ended), and the server's child would print that as a traceback under the scan's own one-line message.
Such a child ends quietly; any other failure to start a worker is one line."""

from __future__ import annotations

import sys


def _worker_start_failed(kind, error, trace) -> None:
    if isinstance(error, FileNotFoundError):  # the pool's semaphores are gone: its scan has ended
        return
    print(f"musictag: a decode worker could not start: {kind.__name__}: {error}", file=sys.stderr)


if sys.argv[:1] == ["-c"]:  # the fork server (multiprocessing starts it with `python -c`), not a scan
    sys.excepthook = _worker_start_failed
