"""Which embedding should `musictag similar` and `playlist` search, and how fast is the search?

    python bench/similarity.py --data ../shared/data/4q/manifest.csv [--model PATH] [--json OUT.json]
    python bench/similarity.py [--model PATH | --width N]      # speed only: no data set needed

Judge with a model whose heads never heard the validation artists (`scripts/build_joint_model.py
--validation-split`): the shipped default model's joint heads were fitted on all 4Q clips, which flatters
every row that uses them (the index's among them).

Quality: the validation artists of the 4Q split (musictag.learn.manifest.split_by_group, 20%, seed 0: the
split `musictag train --val-fraction 0.2` makes, whose clips the shipped model never trained on) are scored
as a scan scores tracks; for every clip, its 10 nearest clips by other artists under each candidate
representation; genre-match@10 is the share of those sharing a genre with it, quadrant-match@10 the share
in its quadrant. Candidates: the index `similar` searches (the stored embedding, standardised, beside the
quadrant and genre probabilities: similar/index.py), the stored embedding alone (a joint model's is the
trunk features, then both musicnn networks' penultimate layers) and its parts, the trunk features raw, the
heads' outputs (logits of every head, standardised), and both side by side; a random ranking is the floor.

Speed: one query against 20,000 and 1,000,000 synthetic tracks (float16 rows, searched by their int8
codes and reranked): exact, and with faiss installed the approximate index (approximate.py) too, with its
build time and its recall@10 against exact search, on structureless and on clustered synthetic tracks;
and a whole `musictag similar` command from a cold start on a 20,000-track database (making the index,
then loading the one stored beside the database).
All figures come from this one run on this machine.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from musictag.defaults import EMBEDDING
from musictag.learn.manifest import read_manifest, split_by_group
from musictag.similar.index import EmbeddingIndex, Track

NEIGHBOURS = 10
GROUPS = 3000  # groups of the clustered synthetic library
QUERIES = 30  # queries timed (and judged for recall) per synthetic library


def score_clips(examples, model: str | None, workers: int) -> tuple[list[dict[str, np.ndarray]], int, dict]:
    from musictag.api import load_tagger
    from musictag.engines.local import Job, score_locally

    tagger = load_tagger(model, "cpu", workers)
    tagger.embedding = True
    jobs = [Job(e.path, tagger.sample_rate, False, 5, tagger.min_samples) for e in examples]
    found = {d.path: d.scores for d in score_locally(tagger, jobs, workers, 64, True) if d.scores is not None}
    return [found[e.path] for e in examples], tagger.model.embedding_channels, tagger.labels


def index_matrix(examples, outputs: list[dict[str, np.ndarray]], labels: dict[str, list[str]]) -> np.ndarray:
    """The rows `musictag similar` compares: the stored embedding and scores, as a scan stores them."""
    tracks = [Track(e.path, None, {head: dict(zip(names, map(float, o[head]))) for head, names in labels.items()})
              for e, o in zip(examples, outputs)]
    return EmbeddingIndex.build(tracks, np.stack([o[EMBEDDING] for o in outputs])).matrix.astype(np.float32)


def candidates(outputs: list[dict[str, np.ndarray]], trunk_width: int) -> dict[str, np.ndarray]:
    """The stored embedding as the index uses it, its parts, the heads' outputs. A joint model's embedding is
    the CP-ResNet's trunk features, then MSD_musicnn's and MTT_musicnn's penultimate layers."""
    stored = np.stack([o[EMBEDDING] for o in outputs])
    trunk = stored[:, :trunk_width]
    heads = np.stack([np.concatenate([_logit(o[h]) for h in sorted(o) if h != EMBEDDING]) for o in outputs])
    out = {"trunk, raw cosine": trunk, "trunk, standardised": trunk}
    if stored.shape[1] > trunk_width:
        out.update({"musicnn (msd + mtt), standardised": stored[:, trunk_width:],
                    "msd, standardised": stored[:, trunk_width:trunk_width + 200]})
    out.update({"stored embedding alone, standardised": stored, "heads' logits": heads,
                "stored embedding + heads": np.hstack([_standard(stored), _standard(heads)])})
    return out


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _standard(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)


def matches(matrix: np.ndarray, examples, standardise: bool | str, seed: int = 0) -> tuple[float, float]:
    """genre-match@10 and quadrant-match@10 over clips by other artists (matrix None: a random ranking;
    standardise "index": the matrix's rows are the index's, compared as they are)."""
    if matrix is None:
        sims = np.random.default_rng(seed).random((len(examples), len(examples)))
    elif standardise == "index":
        sims = matrix @ matrix.T
    elif standardise:
        index = EmbeddingIndex.build([Track(e.path, None, {}) for e in examples], matrix)
        sims = index.matrix.astype(np.float32) @ index.matrix.astype(np.float32).T
    else:
        unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        sims = unit @ unit.T
    genre_hits = quadrant_hits = 0
    for i, e in enumerate(examples):
        other = np.array([x.group != e.group for x in examples])
        order = [j for j in np.argsort(-np.where(other, sims[i], -np.inf)) if other[j]][:NEIGHBOURS]
        genre_hits += sum(bool(set(examples[j].labels["genre"]) & set(e.labels["genre"])) for j in order)
        quadrant_hits += sum(examples[j].labels["quadrant"] == e.labels["quadrant"] for j in order)
    n = len(examples) * NEIGHBOURS
    return genre_hits / n, quadrant_hits / n


def synthetic_index(tracks: int, width: int, clustered: bool = False) -> EmbeddingIndex:
    """`tracks` synthetic rows: independent Gaussian vectors (no structure at all: the hardest case for an
    approximate index), or `clustered`: each the centre of one of GROUPS groups plus twice its spread of noise
    (a library's albums and styles make groups; how tight they are here is a guess, not a measurement)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(GROUPS, width)).astype(np.float32)
    embeddings = rng.normal(size=(tracks, width)).astype(np.float32)
    if clustered:
        embeddings *= 2.0
        for start in range(0, tracks, 1 << 16):
            rows = slice(start, start + (1 << 16))
            embeddings[rows] += centres[rng.integers(0, GROUPS, len(embeddings[rows]))]
    return EmbeddingIndex.build([Track(str(i), None, {}) for i in range(tracks)], embeddings)


def query_seconds(index: EmbeddingIndex, queries: list[int]) -> tuple[float, list[list[int]]]:
    """Median seconds of one query (a track's row, itself left out) and what each query found."""
    times, found = [], []
    for row in queries:
        start = time.perf_counter()
        found.append([r for r, _ in index.nearest(np.asarray(index.matrix[row], np.float32), NEIGHBOURS, {row})])
        times.append(time.perf_counter() - start)
    return float(np.median(times)), found


def speed(tracks: int, width: int, approximate: bool, clustered: bool = False) -> dict[str, float]:
    """Exact query time on `tracks` synthetic rows; with `approximate`, the approximate index's build time,
    query time and recall@10 against exact search (the share of the exact 10 nearest it finds)."""
    index = synthetic_index(tracks, width, clustered)
    queries = list(np.random.default_rng(1).choice(tracks, QUERIES, replace=False))
    exact_seconds, exact = query_seconds(index, queries)
    figures = {"exact_query_seconds": exact_seconds}
    if approximate:
        from musictag.similar.approximate import Approximate

        start = time.perf_counter()
        index.approximate = Approximate.build(index.matrix)
        figures["approximate_build_seconds"] = time.perf_counter() - start
        figures["approximate_query_seconds"], found = query_seconds(index, queries)
        figures["recall_at_10"] = float(np.mean([len(set(a) & set(b)) / NEIGHBOURS for a, b in zip(found, exact)]))
    return figures


def cold_start_seconds(tracks: int = 20_000, width: int = 128) -> tuple[float, float]:
    """Wall seconds of a whole `musictag similar` command (a new process) on a database of `tracks`
    synthetic tracks, each with the shipped model's number of scores: the first run, which makes the index
    and stores it beside the database, then the median of three runs that load it."""
    import os
    import subprocess
    import sys
    import tempfile

    from musictag.store import Database

    rng = np.random.default_rng(0)
    labels = {head: [f"{head}{i}" for i in range(count)] for head, count in
              (("quadrant", 4), ("genre", 14), ("mood", 62), ("msd", 50), ("mtt", 50))}
    with tempfile.TemporaryDirectory() as folder:
        db_path, query = os.path.join(folder, "db.sqlite"), os.path.join(folder, "query.flac")
        open(query, "w").close()
        with Database(db_path, commit_every=60) as db:
            for i in range(tracks):
                scores = {h: {name: round(float(rng.random()), 5) for name in names} for h, names in labels.items()}
                db.put_scores(query if i == 0 else f"/music/{i:06d}.flac", 1, 1, "m", 200.0, scores,
                              rng.normal(size=width).astype(np.float32))
        times = []
        for _ in range(4):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "musictag", "similar", query, "--db", db_path], check=True,
                           capture_output=True)
            times.append(time.perf_counter() - start)
    return times[0], float(np.median(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="The 4Q manifest (without it: speed only)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--width", type=int, default=None,
                        help="Dimensions of the synthetic tracks (default: the model's stored embedding's)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report = quality(args) if args.data else {}
    width = args.width or report.pop("width", None) or default_width(args.model)
    report["speed"] = speed_report(width)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


def quality(args) -> dict:
    dataset = read_manifest(args.data, min_count=30)
    _, val = split_by_group(dataset.examples, 0.2, 0)
    outputs, trunk_width, labels = score_clips(val, args.model, args.workers)
    rows = {"random": matches(None, val, False),
            "the index: embedding + quadrant, genre scores": matches(index_matrix(val, outputs, labels), val, "index")}
    for name, matrix in candidates(outputs, trunk_width).items():
        rows[name] = matches(matrix, val, standardise="standardised" in name)
    print(f"{len(val)} validation clips by {len({e.group for e in val})} artists; neighbours by other artists, "
          f"k = {NEIGHBOURS}")
    print(f"{'embedding':48} genre-match@10  quadrant-match@10")
    for name, (genre, quadrant) in rows.items():
        print(f"{name:48} {genre:14.3f}  {quadrant:17.3f}")
    # the stored embedding's width: the synthetic tracks get as many dimensions
    return {"clips": len(val), "matches": rows, "width": len(outputs[0][EMBEDDING])}


def default_width(model: str | None) -> int:
    from musictag.api import load_tagger

    return load_tagger(model, "cpu", 1).model.embedding_channels


def speed_report(width: int) -> dict:
    from musictag.similar.approximate import available

    figures = {"20,000 tracks": speed(20_000, width, False)}
    if available():
        figures["1,000,000 tracks"] = speed(1_000_000, width, True)
        figures["1,000,000 clustered tracks"] = speed(1_000_000, width, True, clustered=True)
    else:
        figures["1,000,000 tracks"] = speed(1_000_000, width, False)
        print("faiss is not installed (pip install faiss-cpu): no approximate index measured")
    for name, f in figures.items():
        line = f"one query, {name} of {width} dimensions: exact {f['exact_query_seconds'] * 1000:.1f} ms"
        if "recall_at_10" in f:
            line += (f"; approximate {f['approximate_query_seconds'] * 1000:.1f} ms, recall@10 "
                     f"{f['recall_at_10']:.3f}, built in {f['approximate_build_seconds']:.0f} s")
        print(line)
    cold = cold_start_seconds(width=width)
    print(f"`musictag similar` from a cold start, 20,000 tracks (the whole command): {cold[0]:.2f} s making the "
          f"index, {cold[1]:.2f} s loading it from beside the database")
    return {"queries": figures, "cold_start_seconds": {"making the index": cold[0], "stored index": cold[1]}}


if __name__ == "__main__":
    main()
