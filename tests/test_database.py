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
