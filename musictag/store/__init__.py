"""What musictag remembers: the scan database (database.py: tracks and models; history.py: what musictag
wrote and whose values are whose; writes.py: temporary copies and the journal of writes under way; locks.py:
one file at a time between runs; library.py: reads over the whole library, for the similarity index and
info), and its exports (export.py: CSV, parquet.py: Parquet). Pure records of
ownership live in ownership.py."""

from .database import Database, default_db_path
from .ownership import Owned
from .rows import Known, Pending, Track

__all__ = ["Database", "Known", "Owned", "Pending", "Track", "default_db_path"]
