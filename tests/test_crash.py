"""The crash test's short form (bench/crash_test.py): a few scans and undos killed at random moments, in
both write modes (auto writes in place where the tags fit)."""

import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import write_track
from musictag.tagfile import write_fields
from test_tags import old_id3v23_mp3

BENCH = Path(__file__).resolve().parents[1] / "bench" / "crash_test.py"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds a killed run's processes in /proc")
@pytest.mark.parametrize("write_mode", ("copy", "auto"))
def test_killed_scans_and_undos_leave_every_file_and_the_database_exact(tiny_checkpoint, tmp_path, write_mode):
    spec = importlib.util.spec_from_file_location("crash_test", BENCH)
    crash_test = importlib.util.module_from_spec(spec)
    sys.modules["crash_test"] = crash_test  # its dataclasses look their module up
    spec.loader.exec_module(crash_test)
    library = tmp_path / "library"
    old_id3v23_mp3(library / "old.mp3")
    for i, name in enumerate(("a.flac", "b.wav", "c.ogg")):
        write_track(library / name, seconds=3.0, freq=220.0 * (i + 1), seed=i)
    write_fields(library / "a.flac", {"genre": ["Folk"]})  # padded by a tagger: its tags fit in place
    work = tmp_path / "work"
    work.mkdir()
    tally = crash_test.run_trials(library, trials=3, work=work, model=str(tiny_checkpoint), workers=1, seed=1,
                                  write_mode=write_mode, in_a_row=2)  # a busy machine still completes a run
    assert tally.kills == 3 and tally.complete_scans + tally.complete_undos >= 1, tally
    assert (tally.mismatches, tally.orphans, tally.leftovers_remaining, tally.journal_remaining) == (0, 0, 0, 0), \
        tally.problems
    assert (tally.reference_in_place > 0) == (write_mode == "auto"), tally
