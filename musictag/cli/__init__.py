"""The command line: a thin Typer layer over musictag.api that parses and prints. app.py: the app and what
every command shares; options.py: shared options, their parsing and the config file; display.py: bars and
summaries; library.py: scan, undo, export-csv, info, config; models.py: train, finetune, evaluate,
model-card; similar.py: similar, playlist. Heavy imports (torch, av) happen inside commands, so `musictag --help` is instant."""

from . import library, models, similar  # noqa: F401 (their commands join the app)
from .app import app, main

__all__ = ["app", "main"]
