import os

import numpy as np
import pytest

from conftest import FORMATS, tone, write_track
from musictag.model.audio import Span, load_audio, load_excerpts, open_audio, plan_excerpts
from musictag.errors import AudioDecodeError

ALL = sorted(FORMATS) + [".alac.m4a"]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    return {ext: write_track(root / f"track{ext}", seconds=6.0) for ext in ALL}


@pytest.mark.parametrize("ext", ALL)
def test_every_format_decodes_to_the_right_duration_and_rate(library, ext):
    path = library[ext]
    with open_audio(path) as reader:
        assert reader.samplerate == FORMATS.get(ext, 44100) or ext == ".alac.m4a"
    audio = load_audio(path, 22050)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / 22050 - 6.0) <= 0.06  # ±1%
    assert 0.1 < np.abs(audio).max() <= 1.0


def test_opus_rate_is_what_the_decoder_reports(library):
    with open_audio(library[".opus"]) as reader:
        assert reader.samplerate == 48000


def test_opus_through_ffmpeg_gives_libsndfile_samples_at_the_same_positions(library):
    """Opus is decoded by PyAV first (faster); it must match libsndfile's decode, without a shift."""
    from musictag.model.audio import _SoundfileReader

    span = Span(2.0, 1.5)
    with open_audio(library[".opus"]) as reader, _SoundfileReader(str(library[".opus"])) as reference:
        assert type(reader) is not _SoundfileReader
        ours, theirs = reader.read(span), reference.read(span)
    assert len(ours) == len(theirs) == 72000
    np.testing.assert_allclose(ours, theirs, atol=3e-3)


@pytest.mark.parametrize("ext", ALL)
def test_partial_read_equals_slice_of_full_decode(library, ext):
    path = library[ext]
    with open_audio(path) as reader:
        sr = reader.samplerate
    full = load_audio(path, sr)
    part = load_audio(path, sr, offset=2.0, duration=1.5)
    expected = full[int(2.0 * sr):int(2.0 * sr) + len(part)]
    assert abs(len(part) - 1.5 * sr) <= 1
    if ext == ".wma":
        # ASF timestamps are whole milliseconds: the excerpt is exact up to a shift of under 1 ms
        lags = range(-sr // 1000, sr // 1000 + 1)
        error = min(np.abs(part - full[int(2.0 * sr) + lag:][:len(part)]).max() for lag in lags)
        assert error < 1e-4
    elif ext in (".m4a", ".mp4"):
        # FFmpeg's AAC decoder fills noise-coded (PNS) bands from a random generator: same signal, new noise
        assert np.corrcoef(part, expected)[0, 1] > 0.99
        assert np.abs(part - expected).max() < 0.05
    else:
        np.testing.assert_allclose(part, expected, atol=1e-4)


def test_partial_read_after_resampling_matches_within_resampler_edge(library):
    path = library[".flac"]
    full = load_audio(path, 22050)
    part = load_audio(path, 22050, offset=2.0, duration=1.5)
    expected = full[44100:44100 + len(part)]
    # soxr's filter transient touches ~the first/last few ms of a chunk; the interior is identical
    np.testing.assert_allclose(part[400:-400], expected[400:-400], atol=1e-3)


def test_resampling_keeps_frequency_and_length(tmp_path):
    import soundfile

    sr = 48000
    path = tmp_path / "sine.wav"
    soundfile.write(path, tone(4.0, sr, 1000.0, stereo=False)[0], sr)
    audio = load_audio(path, 16000)
    assert len(audio) == 4 * 16000
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    peak_hz = np.argmax(spectrum) * 16000 / len(audio)
    assert abs(peak_hz - 1000.0) < 1.0


def test_excerpts_of_long_track_decode_only_their_windows(tmp_path):
    path = write_track(tmp_path / "long.flac", seconds=40.0)
    duration, windows = load_excerpts(path, 22050, window=5.0, count=3)
    assert abs(duration - 40.0) < 0.01
    assert len(windows) == 3 and all(len(w) == 5 * 22050 for w in windows)


def test_plan_excerpts():
    assert plan_excerpts(4.0) == [Span(0.0, 4.0)]
    assert plan_excerpts(30.0, 10.0, 3) == [Span(0.0, 10.0), Span(10.0, 10.0), Span(20.0, 10.0)]
    spans = plan_excerpts(240.0, 10.0, 3)
    assert len(spans) == 3
    assert spans[0].offset >= 24.0 and spans[-1].offset + 10.0 <= 216.0  # intro/outro skipped
    assert all(b.offset >= a.offset + 10.0 for a, b in zip(spans, spans[1:]))  # no overlap
    assert plan_excerpts(15.0, 10.0, 3) == [Span(2.5, 10.0)]
    for duration in (10.5, 33.3, 61.0, 600.0, 7200.0):
        for s in plan_excerpts(duration):
            assert 0.0 <= s.offset and s.offset + s.duration <= duration + 1e-6


def _garbage(path):
    path.write_bytes(os.urandom(4096))


@pytest.mark.parametrize("name,make,reason", [
    ("empty.mp3", lambda p: p.write_bytes(b""), "empty"),
    ("garbage.flac", _garbage, ""),
    ("notes.ogg", lambda p: p.write_text("this is a text file, not audio\n" * 50), ""),
    ("notes.mp3", lambda p: p.write_text("lyrics\n" * 100), ""),
    ("missing.wav", lambda p: None, "cannot open"),
])
def test_broken_inputs_raise_typed_error_with_path(tmp_path, name, make, reason):
    path = tmp_path / name
    make(path)
    with pytest.raises(AudioDecodeError) as info:
        load_audio(path, 22050)
    assert str(path) in str(info.value)
    assert reason in str(info.value)


def test_zero_length_audio_is_an_error(tmp_path):
    import soundfile

    path = tmp_path / "silent.wav"
    soundfile.write(path, np.zeros(0, np.float32), 44100)
    with pytest.raises(AudioDecodeError, match="silent.wav"):
        load_audio(path, 22050)


def test_truncated_mp3_decodes_what_it_can(tmp_path):
    path = write_track(tmp_path / "whole.mp3", seconds=6.0)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: len(data) // 2])
    audio = load_audio(cut, 22050)
    assert 2.0 < len(audio) / 22050 < 4.0


@pytest.mark.parametrize("ext", [".mp3", ".flac"])
def test_a_truncated_track_is_excerpted_from_the_part_that_decodes(tmp_path, ext):
    path = write_track(tmp_path / f"whole{ext}", seconds=45.0, freq=330.0)
    whole = load_audio(path, 22050)
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the header still promises 45 s
    duration, windows = load_excerpts(cut, 22050)
    assert 15.0 < duration < 30.0
    assert len(windows) == 2 and all(len(w) == 10 * 22050 for w in windows)
    for span, w in zip(plan_excerpts(duration), windows):  # the surviving half's audio, where the plan puts it
        start = int(round(span.offset * 22050))
        np.testing.assert_allclose(w, whole[start:start + len(w)], atol=0.02)


def test_truncated_m4a_fails_cleanly_or_decodes_partially(tmp_path):
    path = write_track(tmp_path / "whole.m4a", seconds=6.0)
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(path.read_bytes()[:3000])
    try:
        audio = load_audio(cut, 22050)
    except AudioDecodeError as e:
        assert "cut.m4a" in str(e)
    else:
        assert len(audio) < 6 * 22050


def test_huge_request_is_refused(tmp_path, monkeypatch):
    import musictag.model.audio as audio_module

    path = write_track(tmp_path / "t.wav", seconds=3.0)
    monkeypatch.setattr(audio_module, "MAX_DECODE_SECONDS", 1.0)
    with pytest.raises(AudioDecodeError, match="limit"):
        load_audio(path, 22050)


@pytest.mark.skipif(os.name == "nt", reason="Windows file names are always Unicode")
def test_a_name_that_is_not_utf8_still_goes_to_libsndfile(tmp_path):
    from musictag.model.audio import _SoundfileReader

    write_track(tmp_path / "plain.flac", seconds=2.0, freq=440.0)
    raw = os.fsencode(tmp_path) + b"/caf\xe9.flac"
    try:
        os.rename(os.fsencode(tmp_path / "plain.flac"), raw)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    with open_audio(os.fsdecode(raw)) as reader:
        assert isinstance(reader, _SoundfileReader)  # not the PyAV fallback
        assert reader.duration == pytest.approx(2.0, abs=0.01)
