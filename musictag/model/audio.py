"""Audio front end: any common music file in, float32 mono at a fixed rate out.

soundfile (libsndfile) reads wav, aiff, flac, mp3 and ogg vorbis with exact seeks; PyAV (FFmpeg)
reads opus (faster there, see PYAV_FIRST) and everything soundfile refuses (m4a AAC/ALAC, wma, mp4 audio,
ogg-flac). soxr resamples. Only the
requested span is decoded: both backends seek, so an excerpt of a long track costs a fraction of a full
decode. Channels are averaged the same way for every backend, so the same song gives the same samples
whatever container it comes in.

Truncated files decode what they can: the samples before the damage are returned, and the error is
raised only when nothing at all could be decoded.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from ..defaults import EXCERPT_COUNT, SAMPLE_RATE, WINDOW_SECONDS
from ..errors import AudioDecodeError

EDGE_FRACTION = 0.1  # share of the track skipped at each end (intros/outros are often silent)
EDGE_MAX_SECONDS = 30.0
MAX_DECODE_SECONDS = 2 * 3600  # refuse to hold more than this in memory (a 10-hour mix is not a song)
# Decoding restarts this far before a seek target and drops the lead-in: MDCT codecs (mp3, aac, vorbis)
# need the previous frame to rebuild the first one, so a cold start would corrupt the excerpt's head.
PREROLL_SECONDS = 0.25
# A file whose decodable audio is less than this share of what its header states is damaged (a cut
# download whose header promises 4 minutes and that holds 1 s): it is not tagged from that second. A file
# cut in half is still excerpted from the half that decodes.
DAMAGED_SHARE = 0.25
FINGERPRINT_BYTES = 2**18  # audio bytes hashed into a track's fingerprint (audio_fingerprint)
# Formats FFmpeg decodes faster than libsndfile, with the same samples at the same positions: Opus, 1.7-2x
# (bench library, 5 excerpts per track: 250-307 ms against 526-536 ms; samples within 0.002, no shift).
PYAV_FIRST = frozenset({".opus"})


@dataclass(frozen=True)
class Span:
    """A part of a track, in seconds; duration None means "to the end"."""

    offset: float = 0.0
    duration: float | None = None


def plan_excerpts(
    duration: float,
    window: float = WINDOW_SECONDS,
    count: int = EXCERPT_COUNT,
) -> list[Span]:
    """Which windows of a track of `duration` seconds are analysed.

    Short tracks (up to one window) are analysed whole. Longer ones get up to `count`
    non-overlapping windows, each centred in an equal share of the analysed region. That region is
    the track minus EDGE_FRACTION of its length (at most EDGE_MAX_SECONDS) at each end, because
    intros and outros are often silent or untypical, but the edges are only trimmed as far as still
    leaves room for `count` windows: a 30 s preview is covered whole by three 10 s windows.
    """
    if duration <= window:
        return [Span(0.0, max(duration, 0.0))]
    edge = min(duration * EDGE_FRACTION, EDGE_MAX_SECONDS)
    usable = max(duration - 2 * edge, min(duration, count * window))
    lo = (duration - usable) / 2
    n = max(1, min(count, int(usable // window)))
    share = usable / n
    return [Span(round(lo + i * share + (share - window) / 2, 3), window) for i in range(n)]


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE, offset: float = 0.0,
               duration: float | None = None) -> np.ndarray:
    """Decode `duration` seconds from `offset` (all of it when None) as float32 mono at `sr`."""
    with open_audio(path) as reader:
        return _at_rate(reader, Span(offset, duration), sr)


def load_excerpts(path: str | os.PathLike, sr: int = SAMPLE_RATE,
                  window: float = WINDOW_SECONDS, count: int = EXCERPT_COUNT
                  ) -> tuple[float, list[np.ndarray]]:
    """The track's duration and its excerpts per `plan_excerpts`, opening the file once.

    A file damaged part-way (a truncated download: its header still promises the full length) is
    planned again on the audio that does decode, rather than failing on the excerpts past the damage."""
    with open_audio(path) as reader:
        try:
            return reader.duration, [_at_rate(reader, s, sr) for s in plan_excerpts(reader.duration, window, count)]
        except AudioDecodeError:
            audio = _at_rate(reader, Span(), sr)  # everything before the damage; raises when that is nothing
            check_complete(reader.path, len(audio) / sr, reader.duration)
    duration = len(audio) / sr
    starts = [int(round(s.offset * sr)) for s in plan_excerpts(duration, window, count)]
    return duration, [audio[start:start + int(round(window * sr))] for start in starts]


def load_whole(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """All of a track, as load_audio; a file damaged far from its end (check_complete) is an error."""
    with open_audio(path) as reader:
        audio = _at_rate(reader, Span(), sr)
        check_complete(reader.path, len(audio) / sr, reader.duration)
    return audio


def check_complete(path: str, decoded: float, stated: float) -> None:
    """A file whose audio decodes for far less than its header says (DAMAGED_SHARE) is damaged."""
    if stated > 0 and decoded < DAMAGED_SHARE * stated:
        raise AudioDecodeError(path, f"damaged: {decoded:.1f} s of {stated:.0f} s decodable")


def audio_fingerprint(path: str | os.PathLike) -> str | None:
    """A hash of the track's first audio packets as stored (demuxed, not decoded) and its stream's shape.
    Tags are not in it: a file that another program moved, renamed or retagged keeps its fingerprint, so
    its record follows it. None: no audio stream could be read."""
    import av

    digest, seen = hashlib.blake2b(digest_size=16), 0
    try:
        with av.open(os.fspath(path), metadata_errors="ignore") as container:
            stream = container.streams.audio[0]
            # its length too: two tracks may begin with the same stretch of digital silence
            length = float(stream.duration * stream.time_base) if stream.duration else container.duration or 0
            digest.update(f"{stream.codec_context.name} {stream.codec_context.sample_rate} {length:.1f}".encode())
            for packet in container.demux(stream):
                if packet.size:
                    digest.update(bytes(packet))
                    seen += packet.size
                if seen >= FINGERPRINT_BYTES:
                    break
    except (av.FFmpegError, IndexError, OSError, ValueError):
        return None
    return digest.hexdigest() if seen else None


def decode_failure(e: Exception) -> str:
    """Why a decode worker could not decode its file, as one line. Workers catch every exception: a
    decoder crash on one file must not end the run, and the file's reason goes back to the parent."""
    return e.reason if isinstance(e, AudioDecodeError) else f"{type(e).__name__}: {e}"


def probe_duration(path: str | os.PathLike) -> float:
    with open_audio(path) as reader:
        return reader.duration


def open_audio(path: str | os.PathLike) -> "_Reader":
    """A reader for the file: soundfile when it accepts the file, else PyAV (PyAV first for PYAV_FIRST)."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise AudioDecodeError(path, f"cannot open: {e.strerror or e}") from None
    if size == 0:
        raise AudioDecodeError(path, "empty file")
    if os.path.splitext(path)[1].lower() in PYAV_FIRST:
        try:
            return _PyAVReader(path)
        except AudioDecodeError:
            pass  # libsndfile may still read it
    try:
        return _SoundfileReader(path)
    except Exception:  # libsndfile refuses many valid files (m4a, wma...): PyAV decides
        return _PyAVReader(path)


def _resample(audio: np.ndarray, native_sr: int, sr: int) -> np.ndarray:
    if native_sr != sr and audio.size:
        import soxr

        audio = soxr.resample(audio, native_sr, sr, quality="HQ")
    return np.ascontiguousarray(audio, dtype=np.float32)


def _at_rate(reader: "_Reader", span: Span, sr: int) -> np.ndarray:
    """One span of a reader's audio at `sr`; an empty result is an error naming the file."""
    audio = reader.read(span)
    if audio.size == 0:
        raise AudioDecodeError(reader.path, "no audio samples in the requested part")
    return _resample(audio, reader.samplerate, sr)


def _check_length(path: str, seconds: float) -> None:
    if seconds > MAX_DECODE_SECONDS:
        raise AudioDecodeError(
            path, f"{seconds / 3600:.1f} h of audio requested; the limit is {MAX_DECODE_SECONDS / 3600:.0f} h")


class _Reader:
    path: str
    samplerate: int
    duration: float

    def read(self, span: Span) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _SoundfileReader(_Reader):
    def __init__(self, path: str):
        import soundfile

        self.path = path
        self._file = soundfile.SoundFile(_os_path(path))
        self.samplerate = self._file.samplerate
        self.duration = self._file.frames / self.samplerate
        if not 0 < self._file.frames < 2**62:  # none, or not known (a FLAC whose header leaves it open)
            self._file.close()
            raise ValueError("no frames")  # let PyAV judge files libsndfile sees as empty or of unknown length

    def read(self, span: Span) -> np.ndarray:
        start = max(0, int(round(span.offset * self.samplerate)))
        if start >= self._file.frames:
            return np.zeros(0, np.float32)
        count = self._file.frames - start if span.duration is None else int(round(span.duration * self.samplerate))
        _check_length(self.path, count / self.samplerate)
        lead = min(start, int(PREROLL_SECONDS * self.samplerate))
        try:
            self._file.seek(start - lead)
            data = self._file.read(count + lead, dtype="float32", always_2d=True)[lead:]
        except Exception as e:  # damaged stream: PyAV decodes what it can
            try:
                with _PyAVReader(self.path) as fallback:
                    return _resample(fallback.read(span), fallback.samplerate, self.samplerate)
            except AudioDecodeError:
                raise AudioDecodeError(self.path, f"decoding failed: {e}") from None
        return data.mean(axis=1, dtype=np.float32)

    def close(self) -> None:
        self._file.close()


def _os_path(path: str) -> str | bytes:
    """The name as libsndfile should get it. On POSIX that is the bytes: soundfile cannot encode a name
    that is not valid UTF-8 (Python holds such bytes as surrogates). Windows names are Unicode."""
    return path if os.name == "nt" else os.fsencode(path)


_SAMPLE_SCALE = {"s16": 2.0**15, "s16p": 2.0**15, "s32": 2.0**31, "s32p": 2.0**31,
                 "u8": 2.0**7, "u8p": 2.0**7, "s64": 2.0**63, "s64p": 2.0**63}


class _PyAVReader(_Reader):
    def __init__(self, path: str):
        import av

        self.path = path
        try:
            self._container = av.open(path, metadata_errors="ignore")
        except Exception as e:
            raise AudioDecodeError(path, f"not valid audio ({_describe(e)})") from None
        if not self._container.streams.audio:
            self._container.close()
            raise AudioDecodeError(path, "not valid audio (no audio stream)")
        self._stream = self._container.streams.audio[0]
        self.samplerate = self._stream.codec_context.sample_rate or self._stream.rate
        if not self.samplerate:
            self._container.close()
            raise AudioDecodeError(path, "not valid audio (no sample rate: damaged, or not the format its name says)")
        self.duration = self._probe_duration()

    def _probe_duration(self) -> float:
        if self._stream.duration is not None and self._stream.time_base:
            return float(self._stream.duration * self._stream.time_base)
        if self._container.duration is not None:
            return self._container.duration / 1_000_000  # microseconds (av.time_base)
        return 0.0

    def read(self, span: Span) -> np.ndarray:
        import av

        sr = self.samplerate
        first = int(round(span.offset * sr))
        end = int(round(self.duration * sr)) if self.duration else None  # drops the encoder's tail padding
        last = end if span.duration is None else first + int(round(span.duration * sr))
        _check_length(self.path, ((last or self.duration * sr) - first) / sr)
        self._seek(span.offset - PREROLL_SECONDS)
        chunks, position, kept = [], None, 0
        try:
            for frame in self._container.decode(self._stream):
                if position is None:  # later frames are counted: container timestamps can be coarse (ms)
                    position = 0 if frame.pts is None else int(round(float(frame.pts * frame.time_base) * sr))
                    if first < position <= first + sr:  # stream starts late (e.g. wma): keep the timeline
                        chunks.append(np.zeros(position - first if last is None else min(position, last) - first,
                                               np.float32))
                samples = _frame_to_mono(frame)
                lo, hi = max(first - position, 0), len(samples) if last is None else min(last - position, len(samples))
                if hi > lo:
                    chunks.append(samples[lo:hi])
                    kept += hi - lo
                position += len(samples)
                if last is not None and position >= last:
                    break
                if kept > MAX_DECODE_SECONDS * sr:
                    _check_length(self.path, MAX_DECODE_SECONDS + 1)
        except av.FFmpegError as e:
            if not chunks:  # nothing decodable; truncated files keep what came before the damage
                raise AudioDecodeError(self.path, f"decoding failed ({_describe(e)})") from None
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

    def _seek(self, seconds: float) -> None:
        import av

        try:
            if seconds > 0:
                self._container.seek(int(seconds / self._stream.time_base), stream=self._stream)
            else:
                self._container.seek(0)
        except av.FFmpegError as e:  # a stream with no audio packets (a header only) cannot be sought in
            raise AudioDecodeError(self.path, "no audio samples (the file holds a header and no audio)"
                                   if not self.duration else f"decoding failed ({_describe(e)})") from None

    def close(self) -> None:
        self._container.close()


def _frame_to_mono(frame) -> np.ndarray:
    array = frame.to_ndarray()
    name = frame.format.name
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        array = array.reshape(-1, channels).T
    array = array.astype(np.float32)
    if name.startswith("u8"):
        array -= 128.0
    scale = _SAMPLE_SCALE.get(name)
    if scale:
        array /= scale
    return array.mean(axis=0, dtype=np.float32)


def _describe(error: Exception) -> str:
    """The reason alone: FFmpeg errors repeat the file name, which the caller already reports."""
    text = getattr(error, "strerror", None) or str(error).strip() or type(error).__name__
    return str(text).splitlines()[0][:200]
