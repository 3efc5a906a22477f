"""similar and playlist: ranking, paths between two sounds, filters, M3U8, through the command too."""

import os

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_track
from musictag.cli import app
from musictag.similar import EmbeddingIndex, Entry, Filters, allowed_rows, like, m3u8
from musictag.similar.index import Track
from musictag.store import Track as StoredTrack
from musictag.tagfile import write_fields

runner = CliRunner()


def index_of(vectors, durations=None):
    tracks = [Track(f"/music/{i}.flac", (durations or [200.0] * len(vectors))[i], {}) for i in range(len(vectors))]
    return EmbeddingIndex.build(tracks, np.array(vectors, np.float32))


def stored(tracks, written):
    """The database's records of `tracks` (path -> store Track), with what the scan wrote into some."""
    return {t.path: StoredTrack(t.path, 1, 1, "m", t.duration, t.scores, None, written.get(t.path)) for t in tracks}


def test_nearest_ranks_by_cosine_after_standardising_and_leaves_out_what_it_is_told():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 16))
    query = base[7]
    index = index_of(np.vstack([base, query + 0.01 * rng.normal(size=16), query + 0.5 * rng.normal(size=16)]))
    found = index.nearest(index.vector("/music/7.flac"), 3, exclude={7})
    assert [row for row, _ in found[:2]] == [50, 51] and found[0][1] > found[1][1] > found[2][1]
    assert index.matrix.dtype == np.float16 and abs(np.linalg.norm(index.vector("/music/3.flac")) - 1) < 1e-2


def test_the_int8_first_pass_finds_the_float16_rows_nearest():
    rng = np.random.default_rng(5)
    index = index_of(rng.normal(size=(5000, 64)))  # structureless: neighbours' cosines lie close together
    dense = index.matrix.astype(np.float32)
    error = np.abs(index.codes.astype(np.float32) * index.steps - dense)
    assert index.codes.dtype == np.int8 and (error <= index.steps / 2 + 1e-6).all()  # half a step at most
    for row in range(0, 5000, 250):
        truth = np.argsort(-(dense @ dense[row]), kind="stable")[1:11]
        found = index.nearest(dense[row], 10, exclude={row})
        assert [r for r, _ in found] == list(truth)
        assert [x for _, x in found] == pytest.approx(list((dense @ dense[row])[truth]), abs=1e-6)


def test_a_path_between_two_sounds_moves_towards_the_second():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=32), rng.normal(size=32)
    line = [a + (b - a) * t + 0.05 * rng.normal(size=32) for t in np.linspace(0, 1, 40)]
    index = index_of(np.vstack([a, b, *rng.permutation(line)]))
    path = index.between(0, 1, 10)
    assert path[0] == 0 and path[-1] == 1 and len(set(path)) == 10
    towards_b = [float(index.vector("/music/1.flac") @ index.matrix[row].astype(np.float32)) for row in path]
    assert all(later > earlier - 0.05 for earlier, later in zip(towards_b, towards_b[1:]))
    assert towards_b[-1] > towards_b[len(path) // 2] > towards_b[0]


def test_filters_read_what_the_scan_wrote_else_the_best_label_and_the_duration():
    tracks = [Track("/m/a.flac", 100.0, {"genre": {"Jazz": 0.9, "Rock": 0.1}}),
              Track("/m/b.flac", 400.0, {"genre": {"Jazz": 0.2, "Rock": 0.8}}),
              Track("/m/c.flac", 200.0, {"genre": {"Jazz": 0.9}})]
    embeddings = np.array([[1, 0, 0], [0.9, 0.1, 0], [0.5, 0.5, 0]], dtype=np.float32)
    index = EmbeddingIndex.build(tracks, embeddings)
    written = stored(tracks, {"/m/c.flac": {"genre": ["Blues; Soul"]}})
    assert allowed_rows(index, Filters(genres=("jazz",)), written).tolist() == [True, False, False]
    assert allowed_rows(index, Filters(genres=("Soul",)), written).tolist() == [False, False, True]
    assert allowed_rows(index, Filters(max_seconds=300), written).tolist() == [True, False, True]
    # unscored: b sounds most like a, then c; the duration filter, not a tie, decides who follows a
    index = EmbeddingIndex.build([Track(t.path, t.duration, {}) for t in tracks], embeddings)
    assert like(index, [0], 2) == [0, 1]
    assert like(index, [0], 2, allowed_rows(index, Filters(max_seconds=300), written)) == [0, 2]
    assert like(index, [0], 3, allowed_rows(index, Filters(min_seconds=300), written)) == [0, 1]


def test_tracks_that_share_the_quadrant_and_genre_come_before_ones_that_only_sound_alike():
    def scores(quadrant, genre):
        return {"quadrant": {"Q1": quadrant, "Q2": 1 - quadrant}, "genre": {"Jazz": genre, "Rock": 1 - genre},
                "mood": {"calm": 0.5}}
    rng = np.random.default_rng(2)
    base = rng.normal(size=(30, 8))
    near = base[0] + 0.05 * rng.normal(size=8)  # sounds like the query, heard as another quadrant and genre
    tracks = [Track(f"/m/{i}.flac", 1.0, scores(0.9 if i < 10 else 0.1, 0.9 if i < 10 else 0.1)) for i in range(30)]
    tracks.append(Track("/m/near.flac", 1.0, scores(0.1, 0.1)))
    index = EmbeddingIndex.build(tracks, np.vstack([base, near]))
    assert list(index.space.blocks) == ["quadrant", "genre"]  # mood is no block
    found = [row for row, _ in index.nearest(index.vector("/m/0.flac"), 9, exclude={0})]
    assert set(found) == set(range(1, 10))
    unscored = EmbeddingIndex.build([Track(t.path, 1.0, {}) for t in tracks], np.vstack([base, near]))
    assert unscored.nearest(unscored.vector("/m/0.flac"), 1, exclude={0})[0][0] == 30
    # a file scored on the spot gets the row a stored copy of it has
    assert np.allclose(index.normalised(base[3], tracks[3].scores), index.vector("/m/3.flac"), atol=2e-3)


def test_m3u8_has_extinf_lines_and_paths_that_resolve_from_its_folder(tmp_path):
    music, lists = tmp_path / "Müsik", tmp_path / "lists"
    entries = [Entry(str(music / "Björk – Jóga.flac"), 305.4, "Björk", "Jóga"), Entry(str(music / "x.mp3"), None)]
    text = m3u8(entries, str(lists / "mix.m3u8"))
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U" and lines[1] == "#EXTINF:305,Björk - Jóga" and lines[3] == "#EXTINF:-1,x"
    assert os.path.normpath(lists / lines[2]) == entries[0].path and not os.path.isabs(lines[2])
    assert m3u8(entries, str(lists / "mix.m3u8"), absolute=True).splitlines()[2] == entries[0].path


@pytest.fixture
def scanned(tmp_path, tiny_checkpoint):
    lib = tmp_path / "lib"
    for i in range(24):
        path = write_track(lib / ("Ünïcode" if i % 2 else "plain") / f"t{i:02d}.flac", seconds=2.0,
                           freq=150.0 * (1 + i % 6), seed=i)
        write_fields(path, {"artist": [f"Artist {i % 3}"], "title": [f"Song {i}"]})
    db = tmp_path / "db.sqlite"
    result = runner.invoke(app, ["scan", str(lib), "--model", str(tiny_checkpoint), "--db", str(db), "--quiet",
                                 "--workers", "1"])
    assert result.exit_code == 0, result.output
    return lib, db


def test_similar_lists_the_closest_tracks_without_loading_the_model(scanned, monkeypatch):
    import json

    import musictag.api

    lib, db = scanned
    monkeypatch.setattr(musictag.api, "load_tagger", lambda *a, **k: pytest.fail("the model was loaded"))
    query = lib / "plain" / "t00.flac"
    result = runner.invoke(app, ["similar", str(query), "-n", "5", "--json", "--db", str(db)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == 5 and str(query) not in [r["path"] for r in rows]
    assert [r["similarity"] for r in rows] == sorted((r["similarity"] for r in rows), reverse=True)
    others = runner.invoke(app, ["similar", str(query), "-n", "5", "--json", "--other-artists", "--db", str(db)])
    paths = [json.loads(line)["path"] for line in others.output.splitlines()]
    assert paths and all(int(os.path.basename(p)[1:3]) % 3 != 0 for p in paths)  # Artist 0 is the query's


def test_playlist_like_writes_entries_that_resolve_and_skips_a_track_moved_since(scanned, tmp_path):
    lib, db = scanned
    moved = lib / "plain" / "t02.flac"
    moved.rename(lib / "plain" / "renamed.flac")  # moved since the scan: not listed until a scan finds it
    out = tmp_path / "lists" / "mix.m3u8"
    out.parent.mkdir()
    result = runner.invoke(app, ["playlist", "--like", str(lib / "plain" / "t00.flac"), "--size", "20",
                                 "--out", str(out), "--db", str(db)])
    assert result.exit_code == 0 and "20 tracks" in result.output, result.output
    paths = [line for line in out.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    assert len(paths) == 20 and all((out.parent / p).is_file() for p in paths)
    assert str(moved) not in {os.path.normpath(out.parent / p) for p in paths}
    assert "#EXTINF:2,Artist 0 - Song 0" in out.read_text(encoding="utf-8")


def test_playlist_from_a_to_b_and_its_errors(scanned, tmp_path):
    lib, db = scanned
    out = tmp_path / "path.m3u8"
    a, b = lib / "plain" / "t00.flac", lib / "Ünïcode" / "t05.flac"
    result = runner.invoke(app, ["playlist", "--from", str(a), "--to", str(b), "--size", "6", "--out", str(out),
                                 "--db", str(db)])
    assert result.exit_code == 0, result.output
    paths = [line for line in out.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    assert len(paths) == 6 and os.path.normpath(tmp_path / paths[0]) == str(a)
    assert os.path.normpath(tmp_path / paths[-1]) == str(b)
    both = runner.invoke(app, ["playlist", "--from", str(a), "--out", str(out), "--db", str(db)])
    assert both.exit_code == 2 and "both --from TRACK and --to TRACK" in both.output
    gone = runner.invoke(app, ["playlist", "--like", str(lib / "nope.flac"), "--out", str(out), "--db", str(db)])
    assert gone.exit_code == 2 and f"no such file: {lib / 'nope.flac'}" in gone.output
    backwards = runner.invoke(app, ["playlist", "--like", str(a), "--out", str(out), "--db", str(db),
                                    "--min-duration", "400", "--max-duration", "300"])
    assert backwards.exit_code == 2 and "no track is both" in backwards.output
    for command in (["playlist", "--like", str(a), "--out", str(out), "--size", "0"], ["similar", str(a), "-n", "0"]):
        assert runner.invoke(app, [*command, "--db", str(db)]).exit_code == 2
    # a filter nothing passes: the seed alone, and the command says so
    none = runner.invoke(app, ["playlist", "--like", str(a), "--size", "5", "--out", str(out), "--db", str(db),
                               "--genre", "Polka"])
    assert none.exit_code == 0 and "1 tracks of 5 asked: no more tracks in the database pass the filters" in none.output


def test_a_database_without_embeddings_is_one_clear_line(tmp_path):
    from musictag.store import Database

    with Database(tmp_path / "db.sqlite") as database:
        database.put_scores("/m/a.flac", 1, 1, "m", 2.0, {"genre": {"Jazz": 0.5}})
    track = write_track(tmp_path / "a.flac", seconds=1.0)
    result = runner.invoke(app, ["similar", str(track), "--db", str(tmp_path / "db.sqlite")])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "error: no track in the scan database has an embedding: run musictag scan on your library first"]


def test_filters_match_genres_loosely_and_split_joined_and_raw_labels():
    tracks = [Track("/m/a.flac", 100.0, {"genre": {"Pop/Rock": 0.9}}), Track("/m/b.flac", 100.0, {})]
    index = EmbeddingIndex.build(tracks, np.eye(2, dtype=np.float32))
    written = stored(tracks, {"/m/b.flac": {"genre": ["Jazz, Hip Hop"]}})
    assert allowed_rows(index, Filters(genres=("Rock",)), written).tolist() == [True, False]
    assert allowed_rows(index, Filters(genres=("hip-hop",)), written).tolist() == [False, True]


def test_a_library_scored_by_two_models_is_searched_in_one_models_space():
    rows = [(f"/m/{i}", "big" if i < 3 else "small", 1.0, {}, np.full(4, float(i), np.float32)) for i in range(5)]
    index = EmbeddingIndex.from_rows(rows)
    assert index.model == "big" and len(index) == 3 and "/m/4" not in index.rows


def _library_db(path, tracks=6, width=4):
    from musictag.store import Database

    rng = np.random.default_rng(3)
    with Database(path) as database:
        for i in range(tracks):
            database.put_scores(f"/m/{i}.flac", 1, 1, "m", 10.0 + i, {"genre": {"Jazz": 0.5, "Rock": 0.5}},
                                rng.normal(size=width).astype(np.float32))
    return path


def test_the_index_is_stored_beside_the_database_and_made_anew_when_a_track_changes(tmp_path, monkeypatch):
    from musictag.similar.search import library_index
    from musictag.similar.stored import index_folder
    from musictag.store import Database

    db_path = _library_db(tmp_path / "db.sqlite")
    with Database(db_path, create=False) as database:
        made = library_index(database)
    stored = sorted(p.name for p in index_folder(db_path).iterdir())
    assert len(stored) == 3 and {p.split(".", 1)[1] for p in stored} == {"npy", "codes.npy", "npz"}
    with Database(db_path, create=False) as database:
        monkeypatch.setattr(Database, "embedded", lambda *a: pytest.fail("the rows were read again"))
        loaded = library_index(database)
        monkeypatch.undo()
        assert loaded.paths == made.paths and np.array_equal(loaded.matrix, made.matrix)
        assert np.array_equal(loaded.codes, made.codes) and np.array_equal(loaded.steps, made.steps)
        assert loaded.duration(2) == 12.0 and loaded.model == "m" and loaded.space.blocks == made.space.blocks
        database.put_scores("/m/new.flac", 1, 1, "m", 5.0, {"genre": {"Jazz": 0.9, "Rock": 0.1}},
                            np.ones(4, np.float32))
        database.commit()
        again = library_index(database)
    assert "/m/new.flac" in again.rows and len(again) == 7
    assert sorted(p.name for p in index_folder(db_path).iterdir()) != stored  # the old token's files are gone
    assert len(list(index_folder(db_path).iterdir())) == 3


def test_an_unwritable_or_damaged_stored_index_is_made_from_the_database(tmp_path):
    from musictag.similar.search import library_index
    from musictag.similar.stored import index_folder
    from musictag.store import Database

    db_path = _library_db(tmp_path / "db.sqlite")
    index_folder(db_path).write_text("not a folder")  # nothing can be stored: each run makes it
    with Database(db_path, create=False) as database:
        assert len(library_index(database)) == 6 and len(library_index(database)) == 6
    index_folder(db_path).unlink()
    with Database(db_path, create=False) as database:
        library_index(database)
        for stored in index_folder(db_path).iterdir():
            stored.write_bytes(b"damaged")
        assert sorted(library_index(database).paths) == sorted(f"/m/{i}.flac" for i in range(6))
    assert all(p.stat().st_size > 100 for p in index_folder(db_path).iterdir())  # stored anew


def _clustered(rows, width=24, groups=40, seed=4):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, width))
    return (centres[rng.integers(0, groups, rows)] + 0.6 * rng.normal(size=(rows, width))).astype(np.float32)


def test_approximate_search_finds_what_exact_search_finds_and_keeps_to_exclusions_and_filters():
    pytest.importorskip("faiss")
    from musictag.similar.approximate import Approximate

    index = EmbeddingIndex.build([Track(f"/m/{i}", 1.0, {}) for i in range(4000)], _clustered(4000))
    queries = [index.vector(f"/m/{i}") for i in range(0, 4000, 200)]
    exact = [index.nearest(q, 10, exclude={i * 200}) for i, q in enumerate(queries)]
    index.approximate = Approximate.build(index.matrix)
    assert len(index.approximate) == 4000 and index.approximate.lists.nlist == 100
    found = [index.nearest(q, 10, exclude={i * 200}) for i, q in enumerate(queries)]
    recall = np.mean([len({r for r, _ in a} & {r for r, _ in b}) / 10 for a, b in zip(found, exact)])
    assert recall > 0.9 and all(i * 200 not in dict(f) for i, f in enumerate(found))
    assert all(s == sorted(s, reverse=True) for s in ([x for _, x in f] for f in found))
    # scores are the exact cosines of the rows it found
    row, similarity = found[0][0]
    assert similarity == pytest.approx(float(index.matrix[row].astype(np.float32) @ queries[0]), abs=1e-5)
    few = np.zeros(4000, bool)
    few[[5, 77, 3001]] = True  # a filter that lets three rows in: the full pass finds all three
    assert sorted(r for r, _ in index.nearest(queries[0], 10, allowed=few)) == [5, 77, 3001]
    half = np.arange(4000) % 2 == 0
    assert all(r % 2 == 0 for r, _ in index.nearest(queries[1], 10, allowed=half))


def test_a_large_library_is_searched_approximately_with_its_lists_stored_beside_it(tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    from musictag.similar import approximate
    from musictag.similar.stored import index_folder, stored_index
    from musictag.store import Database

    db_path = _library_db(tmp_path / "db.sqlite", tracks=300, width=8)
    with Database(db_path, create=False) as database:
        assert stored_index(database).approximate is None  # 300 tracks: exact
        index = stored_index(database, approximate_from=300)
        assert len(index.approximate) == 300
        assert sorted(p.name.split(".", 1)[1] for p in index_folder(db_path).iterdir()) == [
            "codes.npy", "faiss", "npy", "npz"]
        monkeypatch.setattr(approximate.Approximate, "build", lambda *a: pytest.fail("built again"))
        again = stored_index(database, approximate_from=300)
        query = again.vector("/m/7.flac")
        assert again.nearest(query, 5, exclude={7}) == index.nearest(query, 5, exclude={7})


def test_a_new_file_is_scored_by_the_librarys_shipped_model_or_the_error_names_it(tmp_path):
    from musictag.model.modelfile import SHIPPED_MODELS, expected_sha, model_id, shipped_name, shipped_path
    from musictag.similar.search import SimilarityError, query_vector

    fast = expected_sha(shipped_path(SHIPPED_MODELS["fast"]))
    if fast is None:
        pytest.skip("this checkout has no shipped weights")
    assert shipped_name(model_id(fast)) == "fast" and shipped_name("0123456789ab") is None
    index = EmbeddingIndex.build([Track(f"/m/{i}", 1.0, {}) for i in range(3)], np.eye(3, dtype=np.float32),
                                 model_id(fast))
    asked = []

    def scorer(path, library_model):
        asked.append(library_model)
        return "0123456789ab", np.ones(3, np.float32), {}

    with pytest.raises(SimilarityError, match="give --model fast, or scan it"):
        query_vector(index, str(tmp_path / "new.flac"), scorer)
    assert asked == [model_id(fast)]  # the scorer is told which model to load when none was chosen
