"""The library API under the CLI (the facade): scan, undo, export, evaluate and model cards, and the training
and finetuning recipes of learn/ (recipes.py, finetune_recipe.py) offered under the names they always had.
No printing; progress via callbacks.

scan, undo and export never need torch, so the modules built on it are imported in the functions that
use them: `musictag undo` and `musictag export-csv` start without loading it.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .store import Database, default_db_path
from .defaults import (DECODE_WORKERS, EXPORT_TOP_K, FOLDER_FIELD, GPU_PARENT_THREADS, LOCAL_ENGINE, MODES,
                       decode_workers, usable_cpus)
from .errors import ManifestError
from .store import export as _export
from .learn.finetune_recipe import finetune, finetune_config, finetune_dataset
from .learn.manifest import read_manifest, with_vocabulary, write_manifest
from .learn.recipes import (TRAIN_FEATURE_DEFAULTS, TRAIN_MODEL_DEFAULTS, calibrate_on_teacher,
                            calibrate_vocabulary, clip_probabilities, distilled_set, finish_distilled,
                            mel_probabilities, prepare, seeded_model, split, teacher, train, training_configs)
from .progress import Progress
from .model.modelfile import model_id, model_path, verified_sha256
from .engines.local import start_worker_server
from .scan import ScanModel, ScanOptions, ScanResult, Scanner, undo
from .similar.playlist import Filters
from .similar.search import SimilarityError, playlist, similar

if TYPE_CHECKING:
    from .model.checkpoint import Checkpoint
    from .config import Config
    from .model.inference import Tagger
    from .learn.modelcard import CardInputs

__all__ = ["Filters", "SimilarityError", "playlist", "similar", "MODES", "Database", "ScanOptions", "default_db_path", "export_csv", "undo", "finetune", "finetune_config",
           "finetune_dataset", "write_manifest", "TRAIN_FEATURE_DEFAULTS", "TRAIN_MODEL_DEFAULTS",
           "calibrate_on_teacher", "calibrate_vocabulary", "clip_probabilities", "distilled_set", "finish_distilled",
           "mel_probabilities", "prepare", "seeded_model", "split", "teacher", "train", "training_configs"]


def load_tagger(model: str | Path | None = None, device: str = "auto", workers: int = 0,
                progress: Progress | None = None, start_workers: bool = False) -> "Tagger":
    """The model (the shipped one when None) ready to score; a GPU has scored a first window already
    (with "auto", a CUDA fault means the CPU, reported as a "message" and in tagger.fallback). On the
    CPU torch gets the cores the decode workers leave free (`workers` 0: one per usable CPU); on a GPU
    the parent only stacks and copies, so it keeps few threads and the cores decode. `start_workers`:
    decode workers follow (the local engine), so their server starts importing torch first."""
    if start_workers and not device.startswith("cuda"):
        start_worker_server()
    from .model.checkpoint import load_checkpoint
    from .model.inference import ready_tagger, set_cpu_threads

    warn = (lambda text: progress("message", {"text": text})) if progress else None
    tagger = ready_tagger(load_checkpoint(model), device, warn)
    if tagger.device.type == "cpu":
        cores = usable_cpus()
        set_cpu_threads(max(1, cores - decode_workers(workers) // 2))
    else:
        set_cpu_threads(GPU_PARENT_THREADS)
    return tagger


def scan_model(model: str | Path | None, db: Database, device: str = "auto", workers: int = 0,
               engine: str = LOCAL_ENGINE) -> ScanModel:
    """The model a scan uses, identified by its file's sha256. When a scan has used it before, the
    database knows all that decides tags, and the model is loaded (torch imported) only if some file
    needs scoring: a re-scan of an unchanged library never loads it."""
    path, sha = verified_sha256(model)
    known = db.model_info(model_id(sha))
    load = partial(load_tagger, path, device, workers, start_workers=engine == LOCAL_ENGINE)
    if known is None:
        return ScanModel.of(load())
    kinds, labels, vocabulary = known
    return ScanModel(model_id(sha), kinds, labels, vocabulary, load)


def load_model(model: str | Path | None = None) -> "Checkpoint":
    """The checkpoint at `model`, the shipped one when None."""
    from .model.checkpoint import load_checkpoint

    return load_checkpoint(model)


def locations(model: str | Path | None = None, db: str | Path | None = None) -> dict[str, Path]:
    """Where the model, the scan database, the similarity index beside it and the training feature cache are."""
    from .learn.cache import default_cache_dir
    from .similar.stored import index_folder

    database = Path(db or default_db_path())
    return {"model": model_path(model), "database": database, "similarity index": index_folder(database),
            "feature cache": default_cache_dir()}


def export_csv(db: Database, out, long: bool = False, top_k: int = EXPORT_TOP_K, paths: list[str] | None = None
               ) -> int:
    """Everything the database knows as CSV (store/export.py), and beside each written field why musictag
    wrote its own values there: each with the score it had and the model's threshold it passed."""
    return _export.export_csv(db, out, long, top_k, paths, explain=_why_written(db))


def _why_written(db: Database):
    """track -> {field: "Jazz 0.712 >= 0.550; ..."} for musictag's own values in each field it wrote."""
    from .model.vocabulary import available, vocabulary_from_dict

    vocabularies: dict[str, dict] = {}

    def vocabulary_of(model: str) -> dict:
        if model not in vocabularies:
            known = db.model_info(model)
            fields = available(vocabulary_from_dict(known[2]), known[1]) if known and known[2] else ()
            vocabularies[model] = {f.name: f for f in fields}
        return vocabularies[model]

    def why(track) -> dict[str, str]:
        if not track.written or not track.scores:
            return {}
        owned, vocabulary = db.owned(track.path, track.written), vocabulary_of(track.model)
        return {name: "; ".join(_reason(value, vocabulary.get(name), track.scores.get(name, {}), track.scores)
                                for value in record.added) for name, record in owned.items()}
    return why


def _reason(value: str, field, head: dict[str, float], scores: dict) -> str:
    """One written value with its score and threshold (a model without a vocabulary: its label's score)."""
    from .model.vocabulary import slash_free, track_term_scores

    term = next((t for t in field.terms if t.name == value), None) if field is not None else None
    if term is not None:
        return f"{value} {track_term_scores(field, scores)[term.name]:.3f} >= {term.threshold:.3f}"
    label = next((label for label in head if slash_free(label) == value), None)
    return f"{value} {head[label]:.3f}" if label is not None else value


def embedding_scorer(model: str | Path | None = None, device: str = "auto", workers: int = 0):
    """(path, the library's model id) -> (model id, the track's embedding, its scores), as a scan would
    store them, for a file the database does not know. Without a `model`, the shipped model the library
    was scanned with (the default where it was another); loaded (torch imported) on the first call only."""
    from .model.modelfile import shipped_name

    loaded = []

    def score(path: str, library_model: str = ""):
        from .defaults import BATCH_SIZE, EMBEDDING, EXCERPT_COUNT
        from .engines.local import Job, decode_track, track_scores

        if not loaded:
            loaded.append(load_tagger(model if model is not None else shipped_name(library_model), device, workers))
        tagger = loaded[0]
        tagger.embedding = True
        decoded = decode_track(Job(path, tagger.sample_rate, False, EXCERPT_COUNT, tagger.min_samples))
        if decoded.windows is None:
            raise SimilarityError(f"{path}: {decoded.error}")
        probs = track_scores(tagger, decoded.windows, BATCH_SIZE)
        scores = {head: dict(zip(names, map(float, probs[head]))) for head, names in tagger.labels.items()}
        return tagger.checkpoint.model_id, probs[EMBEDDING], scores
    return score


def torch_build() -> dict:
    """Which torch this runs: its version, the CUDA version it was built for (None: a CPU build) and
    whether a GPU is visible (a CUDA build on a machine without one is gigabytes for nothing)."""
    import torch

    return {"version": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.is_available()}


def scan_options(top_k: dict[str, int] | None = None, every_head_top_k: int | None = None,
                 **settings) -> ScanOptions:
    """ScanOptions with `top_k` overriding the per-head defaults, or `every_head_top_k` replacing them."""
    options = ScanOptions(**{k: v for k, v in settings.items() if v is not None})
    if every_head_top_k is not None:
        options.top_k, options.default_top_k = {}, every_head_top_k
    options.top_k.update(top_k or {})
    return options


def check_extras(engine: str = LOCAL_ENGINE, parquet: bool = False) -> None:
    """Raise the one-line error of an optional extra a scan needs but this install lacks."""
    if engine == "ray":
        from .engines.ray_engine import require_ray

        require_ray()
    if parquet:
        from .store.parquet import require_pyarrow

        require_pyarrow()


def write_parquet(db: Database, out: str | Path, model_id: str, paths: list[str] | None = None) -> tuple[Path, int]:
    """DIR/tracks.parquet of a scan (see parquet.py); the file and its number of rows."""
    from .store.parquet import write_parquet

    return write_parquet(db, out, model_id, paths)


def apply_config(options: ScanOptions, config: "Config", given: Iterable[str] = ()) -> ScanOptions:
    """`options` with the config file's value of every key it sets, but those `given` on the command line.
    id3_version reaches scans whose options have it."""
    settings = {key: value for key, value in config.file.items() if key not in set(given)}
    top_k = settings.pop("top_k", None)
    if isinstance(top_k, int):
        options.top_k, options.default_top_k = {}, top_k
    elif top_k:
        options.top_k.update(top_k)
    for key, value in settings.items():
        if hasattr(options, key):
            setattr(options, key, value)
    return options


def scan(model: "Tagger | ScanModel", db: Database, paths: Iterable[str | os.PathLike],
         options: ScanOptions | None = None, progress: Progress | None = None) -> ScanResult:
    """Score and tag every audio file under `paths` (see scan.Scanner); `model`: a loaded tagger, or
    `scan_model`'s, loaded only if needed."""
    return Scanner(model, db, options or ScanOptions(), progress).run(paths)


def evaluate(tagger: "Tagger", data: str | Path, workers: int = DECODE_WORKERS, robustness: bool = False,
             progress: Progress | None = None, folder_field: str = FOLDER_FIELD) -> dict:
    """Score the model on a labelled manifest or a folder per class (its labels those of the head
    `folder_field`): metrics per head the data has labels for, per-clip predictions, failures."""
    from .learn.evaluate import evaluate as evaluate_dataset

    found = read_manifest(data, min_count=1, folder_field=folder_field)
    dataset = with_vocabulary(found, tagger.labels, tagger.checkpoint.kinds)
    if not dataset.vocab:
        raise ManifestError(f"none of the model's heads ({', '.join(tagger.labels)}) is labelled in {data} (it has "
                            f"{', '.join(found.heads)}; a folder per class: --field names its head)")
    return evaluate_dataset(tagger, dataset, decode_workers(workers), robustness, progress)


def evaluation_tables(report: dict) -> str:
    """An evaluation report as Markdown: the metrics with per-label tables, then the robustness probes."""
    from .learn.modelcard import metrics_table, robustness_table

    tables = [metrics_table(report["metrics"], per_label=True)]
    if "robustness" in report:
        tables.append(robustness_table(report["robustness"]))
    return "\n".join(tables)


def card_inputs(**inputs) -> "CardInputs":
    """modelcard.CardInputs, built without importing torch before a card is written."""
    from .learn.modelcard import CardInputs

    return CardInputs(**inputs)


def write_model_card(model: str | Path, out: str | Path, inputs: "CardInputs") -> None:
    """See modelcard.write_model_card."""
    from .learn.modelcard import write_model_card as write

    write(Path(model), Path(out), inputs)
