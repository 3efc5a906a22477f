"""scan and undo: options and results, the pure tag decision, the scanner, the write tracker, undo."""
