"""The Typer app and its entry point, and what every command shares: one-line failures, the database."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Optional

import typer


app = typer.Typer(add_completion=True, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
                  help="Tag a music library with genres and moods predicted by a CP-ResNet.")


def _print_version(asked: bool) -> None:
    if asked:
        from .. import __version__

        typer.echo(f"musictag {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Tag a music library with genres and moods predicted by a CP-ResNet."""


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(f"{option} must be one of {', '.join(choices)} (got {value!r})")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _database(path: Optional[Path], create: bool = True):
    """The scan database, or one line and exit 2; `create` False for commands that only read."""
    from .. import api
    from ..errors import DatabaseError

    try:
        return api.Database(path, create=create)
    except DatabaseError as e:
        _fail(str(e))


def _csv_file(path: Path):
    """A CSV for writing. A file name that is not valid UTF-8 is written as its own bytes, as `ls` shows it."""
    return open(path, "w", newline="", encoding="utf-8", errors="surrogateescape")


@contextlib.contextmanager
def _quiet_broken_pipe():
    """Output cut short by its reader (`| head`) ends the command quietly, with exit code 0."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):  # later flushes go nowhere, not to a closed pipe
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0)


def main() -> None:
    # File names that are not valid UTF-8 reach us as surrogates: print their bytes as they are (as ls does),
    # where a UTF-8 terminal's strict default would end the run in a traceback.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    app()


if __name__ == "__main__":
    main()
