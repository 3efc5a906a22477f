"""The command line: a thin layer that parses options, calls the library (musictag.api) and prints.

Heavy modules (torch, the model) are imported inside the commands, so `musictag --help` is instant."""

from .commands import app, main

__all__ = ["app", "main"]
