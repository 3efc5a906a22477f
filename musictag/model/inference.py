"""Batched forward passes: audio windows in, per-label probabilities out, on CPU or CUDA."""

from __future__ import annotations

import re
from functools import cached_property
from typing import Callable

import numpy as np
import torch

from .checkpoint import Checkpoint
from ..defaults import EMBEDDING, WINDOW_SECONDS
from ..errors import DeviceError, WindowError
from .features import LogMel
from .joint import joint_features
from .musicnn import SAMPLE_RATE as MUSICNN_RATE
from .network import min_frames, probabilities


def pick_device(device: str = "auto") -> torch.device:
    """auto, cpu, cuda or cuda:N as a torch device, checked now (a bad index would otherwise fail late,
    inside the first forward pass)."""
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise DeviceError(f"--device must be auto, cpu, cuda or cuda:N (got {device!r})")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {device} requested but no CUDA device is available")
    index, count = int(match.group(1) or 0), torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def use_device(device: torch.device) -> None:
    """Make a chosen GPU the current one before anything touches CUDA: pinned memory and a bare
    "cuda" tensor open their context on the current GPU, which is GPU 0 unless set."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def startup_fault(device: str, error: BaseException, warn: Callable[[str], None]) -> None:
    """What a CUDA fault on the first work means: with --device auto, one line through `warn` and the
    caller goes on with the CPU; with a device asked for by name, a DeviceError (one line)."""
    reason = one_line(error)
    if device.strip().lower() != "auto":
        raise DeviceError(f"--device {device}: CUDA failed on its first work: {reason}") from error
    warn(f"CUDA failed on its first work ({reason}); using the CPU instead")


def one_line(error: BaseException) -> str:
    """An exception as one short line (CUDA errors run to several lines of advice)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def is_out_of_memory(error: BaseException) -> bool:
    """A GPU's out-of-memory error, or the CPU allocator's (a RuntimeError naming it)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)


def set_cpu_threads(threads: int) -> None:
    """Give torch the cores the decode workers do not use (oversubscription slows both)."""
    torch.set_num_threads(max(1, threads))


class Tagger:
    """A loaded model with its feature extractor, ready to score batches of equal-length windows."""

    def __init__(self, checkpoint: Checkpoint, device: str = "auto", embedding: bool = False):
        self.checkpoint = checkpoint
        self.embedding = embedding  # predict also gives each window's embedding (under EMBEDDING)
        self.device = pick_device(device)
        use_device(self.device)
        self.mean = float(checkpoint.normalization["mean"])
        self.std = float(checkpoint.normalization["std"])
        self.batch_limit: int | None = None  # after an out-of-memory error: the most windows per pass
        self.fallback = ""  # why CUDA was given up for the CPU at start-up ("" when it was not)

    # Built on first use: a CPU scan's parent only needs the labels (its workers hold the network).
    @cached_property
    def model(self) -> torch.nn.Module:
        model = self.checkpoint.build_model().to(self.device)
        return model.to(memory_format=torch.channels_last) if self.device.type == "cpu" else model

    @cached_property
    def logmel(self) -> LogMel:
        return LogMel(self.checkpoint.feature_config).to(self.device)

    @property
    def sample_rate(self) -> int:
        return self.checkpoint.feature_config.sample_rate

    @property
    def min_samples(self) -> int:
        """The shortest window the network can score (stft with center=True gives 1 + n // hop frames)."""
        return (min_frames(self.checkpoint.model_config) - 1) * self.checkpoint.feature_config.hop_length

    @property
    def labels(self) -> dict[str, list[str]]:
        return self.checkpoint.labels

    @property
    def output_widths(self) -> dict[str, int]:
        """What predict gives per window: each head's labels, and the embedding's width when asked for."""
        widths = {head: len(names) for head, names in self.labels.items()}
        if self.embedding:
            joint = self.checkpoint.joint_config
            widths[EMBEDDING] = (joint.width(self.model.embedding_channels) if joint
                                 else self.model.embedding_channels)
        return widths

    def warm_up(self) -> None:
        """Score one silent window: builds the network on the device and runs every kind of kernel once."""
        self.predict([np.zeros(int(WINDOW_SECONDS * self.sample_rate), np.float32)])

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> normalised (batch, 1, n_mels, frames)."""
        return ((self.logmel(audio) - self.mean) / self.std).unsqueeze(1)

    def predict(self, windows: list[np.ndarray], transform: Callable | None = None) -> dict[str, np.ndarray]:
        """Probabilities per head, (len(windows), n_labels), for windows of any lengths; `transform`
        (a probe's filter) is applied to the normalised log-mel before the network."""
        return self.predict_each(windows, {"": transform})[""]

    def predict_later(self, windows: list[np.ndarray]) -> Callable[[], dict[str, np.ndarray]]:
        """predict in two steps: the passes start now and the function returned waits for them and gives
        what predict gives. On a GPU they run while the caller prepares the next batch (the scan's parent
        keeps one pass in flight: pipeline.WindowBatcher); on the CPU all is done before this returns.
        Errors of the passes' start (out of memory: WindowError) are raised here."""
        finish = self.launch(windows, {"": None})
        return lambda: finish()[""]

    def predict_each(self, windows: list[np.ndarray], transforms: dict[str, Callable | None]
                     ) -> dict[str, dict[str, np.ndarray]]:
        """`predict` once per named transform, computing each window's log-mel only once (so a transform
        must return a new tensor, not change its input)."""
        return self.launch(windows, transforms)()

    @torch.inference_mode()
    def launch(self, windows: list[np.ndarray], transforms: dict[str, Callable | None]
               ) -> Callable[[], dict[str, dict[str, np.ndarray]]]:
        """Start predict_each's passes; the function returned waits for them and gives its result. Out of
        memory, passes are halved and retried; a window that does not fit alone raises WindowError with
        its index."""
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            by_length.setdefault(len(w), []).append(i)
        started: list[tuple[list[int], str, Callable[[], dict[str, np.ndarray]]]] = []
        for indices in by_length.values():
            self._score_in_passes(windows, indices, transforms, started)
        widths = self.output_widths

        def finish() -> dict[str, dict[str, np.ndarray]]:
            out = {name: {key: np.zeros((len(windows), n), np.float32) for key, n in widths.items()}
                   for name in transforms}
            for indices, name, outputs in started:
                for key, p in outputs().items():
                    out[name][key][indices] = p
            return out
        return finish

    def _score_in_passes(self, windows: list[np.ndarray], indices: list[int], transforms: dict, started: list) -> None:
        """Start passes over `indices` of at most batch_limit windows, halving the limit on out of memory
        (a shared GPU, a large --batch-size): one bad batch costs a retry, not the run."""
        pending = [indices]
        while pending:
            chunk = pending.pop()
            limit = self.batch_limit or len(chunk)
            if len(chunk) > limit:
                pending += [chunk[limit:], chunk[:limit]]
                continue
            failure = self._try_pass(windows, chunk, transforms, started)
            if failure:
                if len(chunk) == 1:
                    raise WindowError(chunk[0], f"out of memory on a single window ({failure})")
                self.batch_limit = len(chunk) // 2
                pending.append(chunk)

    def _try_pass(self, windows: list[np.ndarray], indices: list[int], transforms: dict, started: list) -> str:
        """Start one forward pass per transform, each (indices, name, its outputs) appended to `started`;
        "" or, out of memory, the reason (the error itself is dropped here so its frames, and the tensors
        they hold, are freed before the cache is)."""
        try:
            x = self.features(self.staging(windows, indices))
            heard = self._musicnn(windows, indices)
            passes = [(indices, name, self._to_host(self._network(x if transform is None else transform(x), heard)))
                      for name, transform in transforms.items()]
            started += passes
            return ""
        except RuntimeError as e:
            if not is_out_of_memory(e):
                raise
            reason = one_line(e)
        x = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return reason

    @cached_property
    def staging(self) -> "Staging":
        return Staging(self.device)

    def _network(self, x: torch.Tensor, heard: dict | None = None) -> dict[str, torch.Tensor]:
        """Probabilities per head (and the embedding when asked for) of one pass; for a joint model,
        `heard` is musicnn's output on the same windows: its taggrams are the msd and mtt heads, and the
        joint heads read them beside the trunk's features."""
        # fp16 for the trunk on a GPU; the heads (and the log-mel) stay fp32, so scores match the CPU's
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                logits, embedding = self.model.outputs(x)
        else:
            logits, embedding = self.model.outputs(x.contiguous(memory_format=torch.channels_last))
        out = probabilities(logits, self.checkpoint.model_config)
        if heard is not None:
            out.update({network: taggram for network, (taggram, _) in heard.items()})
            out.update(self.joint[1](embedding.float(), heard))
            # what the joint heads read: both networks' features, for similar, playlist and --parquet
            embedding = joint_features(self.joint[1].config, embedding, heard)
        if self.embedding:
            out[EMBEDDING] = embedding
        return out

    @cached_property
    def joint(self) -> tuple[torch.nn.Module, torch.nn.Module] | None:
        """musicnn's networks and the joint heads on the device (None for a CP-ResNet alone)."""
        built = self.checkpoint.build_joint()
        return None if built is None else (built[0].to(self.device), built[1].to(self.device))

    def _musicnn(self, windows: list[np.ndarray], indices: list[int]) -> dict | None:
        """musicnn's taggrams and penultimate layers for windows[indices] (None for a CP-ResNet alone): the
        same decoded windows, resampled to its 16 kHz by soxr."""
        if self.joint is None:
            return None
        import soxr

        audio = np.stack([soxr.resample(windows[j], self.sample_rate, MUSICNN_RATE) for j in indices])
        return self.joint[0](torch.from_numpy(audio.astype(np.float32, copy=False)).to(self.device))

    def _to_host(self, out: dict[str, torch.Tensor]) -> Callable[[], dict[str, np.ndarray]]:
        """A pass's outputs on their way to the host; the function returned waits for them. On a GPU the
        copy is queued behind the pass, into pinned memory, with an event marking its end: waiting for it
        does not wait for passes queued after this one (a plain .cpu() would)."""
        if self.device.type != "cuda":
            host = {key: value.cpu().numpy() for key, value in out.items()}
            return lambda: host
        pinned = {key: torch.empty(value.shape, dtype=value.dtype, pin_memory=True).copy_(value, non_blocking=True)
                  for key, value in out.items()}
        copied = torch.cuda.Event()
        copied.record()

        def wait() -> dict[str, np.ndarray]:
            copied.synchronize()
            return {key: value.numpy() for key, value in pinned.items()}
        return wait


class Staging:
    """Where a pass's windows are stacked on the host, reused pass after pass (a pass of 48 ten-second
    windows is 42 MB: no new allocation, and no second copy into pinned memory, each time).

    On CUDA the buffers are pinned, and the copy to the GPU runs on a side stream, so it overlaps the
    previous pass's kernels; there are two buffers, used in turn, and one is refilled only after its last
    copy has finished (a CUDA event), so the next batch is stacked while the current one is still on its
    way. On the CPU, one plain buffer (pinning would only cost): the pass has read it before predict
    returns."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.buffers = [torch.empty(0) for _ in range(2 if self.cuda else 1)]
        self.copied: list = [None] * len(self.buffers)  # per buffer, the event its last copy recorded
        self.turn = 0
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def __call__(self, windows: list[np.ndarray], indices: list[int]) -> torch.Tensor:
        """windows[indices] (all of one length) as one (n, samples) tensor on the device."""
        self.turn = (self.turn + 1) % len(self.buffers)
        i, n, length = self.turn, len(indices), len(windows[indices[0]])
        if self.copied[i] is not None:
            self.copied[i].synchronize()  # its previous copy to the GPU has read it
        if self.buffers[i].numel() < n * length:
            self.buffers[i] = torch.empty(n * length, dtype=torch.float32, pin_memory=self.cuda)
        host = self.buffers[i][:n * length].view(n, length)
        np.stack([windows[j] for j in indices], out=host.numpy())
        if not self.cuda:
            return host
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            audio = host.to(self.device, non_blocking=True)
            self.copied[i] = self.stream.record_event()
        compute.wait_stream(self.stream)  # the pass reads the audio only once it is there ...
        audio.record_stream(compute)  # ... and its memory is not reused before the pass is done
        return audio


def ready_tagger(checkpoint: Checkpoint, device: str = "auto", warn: Callable[[str], None] | None = None) -> Tagger:
    """A Tagger whose GPU has scored one window already, so a CUDA fault (a GPU too old for this torch
    build, an exclusive GPU in use, no memory) shows now, before any decode is queued, not as a
    traceback from the first batch; see startup_fault for what follows one. A CPU tagger is returned
    as it is: a CPU scan's parent never builds the network."""
    tagger = Tagger(checkpoint, device)
    if tagger.device.type != "cuda":
        return tagger
    try:
        tagger.warm_up()
        return tagger
    except RuntimeError as e:  # CUDA errors, torch.AcceleratorError and out of memory are RuntimeErrors
        reasons: list[str] = []
        startup_fault(device, e, reasons.append)
    del tagger  # its half-built model holds GPU memory
    fallback = Tagger(checkpoint, "cpu")
    fallback.fallback = reasons[0]
    if warn is not None:
        warn(reasons[0])
    return fallback
