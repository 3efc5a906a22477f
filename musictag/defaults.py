"""Defaults that the CLI shows in its help and the library applies, each written once.

Plain constants, and usable_cpus (os only): the CLI reads them before any heavy import, so
`musictag --help` stays instant.
"""

import os

SAMPLE_RATE = 22050  # Hz, the rate models are trained and run at
WINDOW_SECONDS = 10.0  # length of one analysed excerpt (and of the training crops)
# excerpts per track; bench/excerpt_agreement.py on 60 real tracks / 101 held-out ones: the top genre
# of a whole-track analysis is kept for 93% / 84% of tracks with 3 excerpts, 98% / 91% with 5; the top
# mood (62 close labels) for 83% / 76% with 5 and needs about 17 to reach 90% (3.4x the decoding)
EXCERPT_COUNT = 5
# ID3v2 version scan writes: "keep" the file's own (new tags: v2.4), or "3" / "4" to convert (beets' id3v23)
ID3_VERSIONS = ("keep", "3", "4")
ID3_VERSION = "keep"
ID3_HELP = ("ID3v2 version of the mp3, WAV and AIFF files written: keep (each file's own; new tags v2.4), 3 or 4 "
            "(convert them).")
# how tags are written: copy (a tagged copy renamed over the file), inplace (in the file's own tag space,
# its original bytes journalled first; a tag that does not fit is an error), auto (in place when it fits,
# else by copy). auto, because bench/crash_test.py found no mismatch in 280 kills of scans and undos over the
# modes, 17 in-place writes cut short among them, each put back by the next run (docs/benchmarks.md, Crash test)
WRITE_MODES = ("copy", "inplace", "auto")
WRITE_MODE = "auto"
WRITE_MODE_HELP = ("How tags are written: copy (a tagged copy renamed over the file), inplace (into the file's own "
                   "tag space when the new tags fit, journalled first; files they do not fit fail) or auto (in place "
                   "when they fit, else by copy).")
MODES = ("merge", "replace", "skip-tagged")  # how scan treats the genres and moods a file already has
MODE = "merge"
DEVICES = ("auto", "cpu", "cuda")  # auto: cuda when available; cuda:N picks one of several GPUs
DEVICE_HELP = "auto (CUDA when it works, else the CPU), cpu, cuda or cuda:N."
BATCH_SIZE = 48  # windows per forward pass
THRESHOLD = 0.3  # models without a vocabulary: minimum score of a multi-label tag after the first
# A written term's threshold: the lowest score at which its validation precision reaches the field's target.
# Chosen with bench/written_fields.py (thresholds cross-validated over artist folds of the validation split):
# moods at 0.8 were written for under 20% of clips, and right under half the time out of fold; at 0.6,
# one mood each, 61% of clips get one and it is right 61% of the time.
PRECISION_TARGET = {"genre": 0.8, "mood": 0.6, "quadrant": 0.8}
DEFAULT_PRECISION_TARGET = 0.8  # fields not named there
# fields whose every track has a value: a track none of whose values reaches its own threshold gets its best
# value when that is right this often (vocabulary.calibrate_best, with the recipe's lower bound; the joint
# model's recipe calibrates it). Genre at 0.72 by the nested cross-validation of the 4Q clips: 0.75 wrote
# genres on 73% of clips (78% right), 0.72 on 81% (76% right), 0.70 on 87% (74% right)
BEST_FIRST_TARGET = {"genre": 0.72}
TEACHER_TOP = 5  # a teacher "says" a tag of a track when the tag is among its top 5 for it (teacher heads
# are judged so: bench/teacher_agreement.py; and so are thresholds calibrated on the teacher)
FIELDS = ("genre", "mood", "quadrant", "model")  # what scan writes (model: which model and musictag wrote them) ...
OPT_IN_FIELDS = ("instrument", "voice")  # ... and these when asked (scan --fields); all are scored and stored
TOP_K = {"genre": 2, "mood": 1, "quadrant": 1, "voice": 1}  # most tags written per field ...
OTHER_TOP_K = 3  # ... and for heads not named there
EXPORT_TOP_K = 3  # labels per head in the wide CSV export
EMBEDDING = "embedding"  # the key of a track's embedding beside its heads' scores (Tagger(embedding=True))
ENGINES = ("local", "ray")  # scan engines: this machine's processes, or a Ray cluster (ray_engine.py)
LOCAL_ENGINE = ENGINES[0]
DECODE_WORKERS = 0  # decode processes of training, finetuning and evaluation; 0: usable_cpus()
GPU_PARENT_THREADS = 2  # torch threads of a GPU scan's parent: it only stacks and copies; the cores decode
# threads writing a scan's tags (each a write, read-back and fsync, of the tag or of a whole-file copy: mostly
# waiting on the disk), so writes keep up with a GPU; 0 writes on the scan's own thread. bench/scan_speed.py
# --writes measures it
WRITE_THREADS = 4
VAL_FRACTION = 0.2  # share held out for validation (whole artists at a time)
FINETUNE_EPOCHS = 20
FINETUNE_MIN_COUNT = 5  # a label needs this many tracks to be learnt when finetuning


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, cpusets), capped by a container's
    CPU quota (cgroup v2 cpu.max or v1 cfs quota), where os.cpu_count() counts every CPU of the host."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cpus, quota) if quota else cpus)


def _cgroup_cpu_quota() -> int | None:
    """A container's CPU limit, rounded up to whole CPUs; None when there is none (or no cgroup files)."""
    for quota_file, period_file in (("/sys/fs/cgroup/cpu.max", None),
                                    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            fields = open(quota_file).read().split()
            if period_file:
                fields.append(open(period_file).read().strip())
            quota, period = fields[0], fields[1]
        except (OSError, IndexError):
            continue
        if quota in ("max", "-1"):
            return None
        return max(1, -(-int(quota) // int(period)))
    return None


def decode_workers(requested: int = DECODE_WORKERS) -> int:
    """Decode processes to start: the number asked for, or with 0 one per usable CPU."""
    return requested if requested > 0 else usable_cpus()
FOLDER_FIELD = "label"  # the field a folder-per-class data set trains when none is named (MUSICTAG_LABEL)
