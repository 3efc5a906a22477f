"""Encode float audio to a file with PyAV: used to re-encode clips for the robustness probe (does the
model give the same tags to a 64 kbps MP3?) and to build benchmark and test libraries."""

from __future__ import annotations

import os

import numpy as np

# libsndfile writes these (FFmpeg's native vorbis encoder is "experimental"); opus wants 48 kHz
SOUNDFILE_FORMATS = {".ogg": ("OGG", "VORBIS"), ".opus": ("OGG", "OPUS")}
# extension -> (container format, codec, sample format the encoder takes)
ENCODERS = {
    ".mp3": ("mp3", "libmp3lame", "fltp"),
    ".flac": ("flac", "flac", "s16"),
    ".oga": ("ogg", "flac", "s16"),  # ogg-flac
    ".m4a": ("ipod", "aac", "fltp"),
    ".mp4": ("mp4", "aac", "fltp"),
    ".wma": ("asf", "wmav2", "fltp"),
    ".wav": ("wav", "pcm_s16le", "s16"),
    ".aiff": ("aiff", "pcm_s16be", "s16"),
    ".aif": ("aiff", "pcm_s16be", "s16"),
}


def encode(path: str | os.PathLike, audio: np.ndarray, sr: int, bitrate: int | None = None,
           codec: str | None = None) -> None:
    """Write mono (n,) or (channels, n) float audio in [-1, 1] to `path`, format from its extension."""
    import av

    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
    if ext in SOUNDFILE_FORMATS:
        import soundfile

        container_format, subtype = SOUNDFILE_FORMATS[ext]
        data = np.ascontiguousarray(np.clip(audio.T, -1, 1))
        with soundfile.SoundFile(path, "w", sr, audio.shape[0], subtype, format=container_format) as f:
            for start in range(0, len(data), 1 << 14):  # libsndfile's vorbis writer crashes on huge blocks
                f.write(data[start:start + (1 << 14)])
        return
    container_format, default_codec, sample_format = ENCODERS[ext]
    codec = codec or default_codec
    if codec == "alac":
        sample_format = "s16p"
    channels = audio.shape[0]
    with av.open(path, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=sr, layout="mono" if channels == 1 else "stereo")
        if bitrate or codec == "wmav2":
            stream.bit_rate = bitrate or 128_000  # wmav2 refuses to open without one
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, audio.shape[1], frame_size):
            chunk = audio[:, start:start + frame_size]
            frame = av.AudioFrame.from_ndarray(_to_format(chunk, sample_format), format=sample_format,
                                               layout=stream.layout.name)
            frame.sample_rate = sr
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _to_format(chunk: np.ndarray, sample_format: str) -> np.ndarray:
    clipped = np.clip(chunk, -1.0, 1.0)
    if sample_format.startswith("s16"):
        data = (clipped * 32767).astype(np.int16)
    else:
        data = clipped.astype(np.float32)
    if sample_format.endswith("p"):
        return np.ascontiguousarray(data)
    return np.ascontiguousarray(data.T.reshape(1, -1))  # packed: interleaved channels in one plane
