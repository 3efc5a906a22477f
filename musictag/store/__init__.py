"""What musictag remembers: the scan database (tracks, models, whose value is whose, pending writes,
the journal and temporary copies, file locks), and its exports (CSV, Parquet)."""
