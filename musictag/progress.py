"""Progress reporting. Library code never prints: it calls `progress(event, data)` and the caller (the
CLI's bars, a test, nothing at all) decides what to show."""

from __future__ import annotations

from typing import Callable

Progress = Callable[[str, dict], None]  # events: "start", "file", "cache", "step", "epoch", "message"


def no_progress(event: str, data: dict) -> None:
    """The callback for callers that want no reports."""
