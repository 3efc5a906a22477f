"""The scan database's own contract, below the scan."""

from musictag.store import Database


def test_a_commit_cut_short_by_an_interrupt_can_be_made_again(tmp_path):
    """SIGTERM or Ctrl-C landing just after COMMIT returned, before the database noted it: the interrupt
    handler's own commit must not fail on a transaction that is no longer there (exit 130, not 1)."""
    with Database(tmp_path / "db.sqlite") as db:
        db.put_model("m", {"genre": "multi"})
        db._conn.execute("COMMIT")  # what the interrupted commit() had done
        assert db._in_transaction and not db._conn.in_transaction
        db.commit()
        db.put_model("n", {"genre": "multi"})
    with Database(tmp_path / "db.sqlite") as db:
        assert db.head_kinds() == {"genre": "multi"} and db.model_info("n") is None  # no labels: not all known
        assert db._conn.execute("SELECT COUNT(*) FROM models").fetchone()[0] == 2


def test_embedded_reads_only_the_heads_asked_for_and_leaves_out_those_a_track_lacks(tmp_path):
    import numpy as np

    scores = {"quadrant": {"Q1": 0.75, "Q2": 0.25}, "genre": {"Jazz": 0.5, "Pop/Rock": 0.125}, "mood": {"calm": 1.0}}
    with Database(tmp_path / "db.sqlite") as db:
        db.put_scores("/m/a.flac", 1, 1, "m", 2.0, scores, np.ones(3, np.float32))
        db.put_scores("/m/b.flac", 1, 1, "m", 2.0, {"genre": {"Jazz": 0.25}}, np.zeros(3, np.float32))
        db.put_scores("/m/c.flac", 1, 1, "m", 2.0, scores)  # no embedding: not searchable
        assert [row[3] for row in db.embedded()] == [scores, {"genre": {"Jazz": 0.25}}]
        assert [row[3] for row in db.embedded(("quadrant", "genre"))] == [
            {"quadrant": scores["quadrant"], "genre": scores["genre"]}, {"genre": {"Jazz": 0.25}}]
        assert [row[3] for row in db.embedded(("quadrant",))] == [{"quadrant": scores["quadrant"]}, {}]
        path, model, duration, _, embedding = next(db.embedded(()))
        assert (path, model, duration, embedding.tolist()) == ("/m/a.flac", "m", 2.0, [1.0, 1.0, 1.0])


def test_the_generation_token_changes_with_every_change_of_what_the_index_reads(tmp_path):
    """Scores stored again over a track's old ones (an upsert), a move, a deletion: each renews the token,
    and none fails (a trigger's statement runs under the conflict policy of the one that fired it). What
    musictag wrote into a file is not part of the index: recording it leaves the token as it is."""
    import numpy as np

    with Database(tmp_path / "db.sqlite") as db:
        assert db.generation() == ""
        seen = []
        db.put_scores("/m/a.flac", 1, 1, "m", 2.0, {"genre": {"Jazz": 0.5}}, np.ones(4, np.float32))
        seen.append(db.generation())
        db.put_scores("/m/a.flac", 1, 2, "m", 2.0, {"genre": {"Jazz": 0.7}}, np.ones(4, np.float32))
        seen.append(db.generation())
        db.put_written("/m/a.flac", {"genre": ["Jazz"]}, 1, 3, "decision")
        assert db.generation() == seen[-1]
        db.move_record("/m/a.flac", "/m/b.flac", 1, 3)
        seen.append(db.generation())
        db._write("DELETE FROM tracks WHERE path = ?", ("/m/b.flac",))
        seen.append(db.generation())
        assert len(set(seen)) == 4 and all(len(token) == 16 for token in seen)
